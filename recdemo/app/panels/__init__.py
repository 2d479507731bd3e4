"""The page's panels, each a module with its layout (``build``) and its events (``wire``):
picker (history selection and settings), results, finetune (the side panel). ui.py puts them
on the page and wires what crosses panels; no panel holds model logic (that is events.py)."""

"""Entry point for `make demo` and Hugging Face Spaces (app_file: app.py)."""
from recdemo.app.main import launch

if __name__ == "__main__":
    launch()

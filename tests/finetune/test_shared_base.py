"""Fine-tuning on the served model's shared base (finetune/shared_base.py): the base never changes, served
adapters keep their outputs, requests are served mid-run, and the adapter equals the one trained on a copy."""
from __future__ import annotations

import hashlib
import threading
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny_adapter

from recdemo.config import LLMConfig
from recdemo.finetune.loop import FineTuneSpec, place_lora, run_finetune
from recdemo.finetune.lora import shares_base
from recdemo.finetune.shared_base import OwnBase, SharedBase
from recdemo.llm.service import LLMService

IDS = torch.tensor([[1, 5, 9, 12, 7, 3]])


def spec_for(out, **kw) -> FineTuneSpec:
    base = dict(tasks=["recommend", "genrec"], steps=3, batch_size=2, lr=5e-3, eval_every=2, eval_users=2,
                rank_eval=False, n_candidates=6, eval_candidates=6, lora_dropout=0.1, out=str(out))
    base.update(kw)
    return FineTuneSpec(**base)


@pytest.fixture
def service(tiny_llm, tmp_path):
    return LLMService(LLMConfig(adapter_dir=str(tmp_path / "adapters")), llm=tiny_llm)


@pytest.fixture
def served(service, tmp_path):
    """The service with a random adapter 'served' active, as the app has while someone trains."""
    make_tiny_adapter(service.llm, tmp_path / "adapters" / "served")
    service.adapters.activate("served")
    return service


def base_hash(model) -> str:
    """The frozen base weights, whatever LoRA layers wrap them (peft renames x.weight to x.base_layer.weight)."""
    h = hashlib.sha256()
    for name, p in sorted((n.replace(".base_layer", ""), p) for n, p in model.named_parameters() if "lora_" not in n):
        h.update(name.encode())
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def logits(service, adapter):
    with service.use_adapter(adapter) as llm, torch.inference_mode():
        return llm.model(input_ids=IDS).logits.clone()


def training_keys(service) -> list[str]:
    return [n for n, _ in service.llm.model.named_modules() if "_training" in n]


def test_auto_shares_on_cuda_and_copies_on_cpu():
    assert shares_base("auto", torch.device("cuda")) and not shares_base("auto", torch.device("cpu"))
    assert shares_base("share", torch.device("cpu")) and not shares_base("copy", torch.device("cuda"))
    with pytest.raises(ValueError, match="share base"):
        FineTuneSpec(out="x", share_base="yes")


def test_where_the_lora_goes(service, tmp_path):
    spec = spec_for(tmp_path / "a", share_base="share")
    shared = place_lora(spec, service, processes=1)
    assert isinstance(shared, SharedBase) and shared.adapter in service.adapters.peft.peft_config
    shared.release()
    assert service.adapters.peft is None and not training_keys(service)
    private = SimpleNamespace(llm=service.llm, lock=threading.RLock())  # the CLI's: owns its model
    for svc, processes, copy in ((private, 1, False), (service, 2, False)):
        own = place_lora(spec, svc, processes)
        assert isinstance(own, OwnBase) and (own.model.base_model.model is service.llm.model) != copy
        own.release()
        from recdemo.finetune.lora import trainable_base
        trainable_base(svc, copy_base=False)  # strip what the in-place LoRA injected
    assert isinstance(place_lora(spec_for(tmp_path / "b", share_base="copy"), service, 1), OwnBase)


def test_shared_base_trains_the_adapter_a_copy_trains(service, toy_dataset, tmp_path):
    results = {}
    for mode in ("copy", "share"):
        results[mode] = run_finetune(spec_for(tmp_path / "adapters" / mode, share_base=mode), toy_dataset, service)
        assert results[mode]["status"] == "done"
    a = load_file(str(tmp_path / "adapters" / "copy" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "adapters" / "share" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-3), k
    assert results["copy"]["metrics_after"]["val_loss"] == pytest.approx(results["share"]["metrics_after"]["val_loss"],
                                                                         abs=1e-4)
    assert not training_keys(service) and {"copy", "share"} <= set(service.adapters.loaded)


def test_base_weights_and_served_adapters_stay_as_they_were(served, toy_dataset, tmp_path):
    before_hash, served_before, bare_before = base_hash(served.llm.model), logits(served, "served"), logits(served, None)
    result = run_finetune(spec_for(tmp_path / "adapters" / "new", share_base="share", gradient_checkpointing=True,
                                   micro_batch_size=2), toy_dataset, served)
    assert result["status"] == "done"
    assert base_hash(served.llm.model) == before_hash
    assert torch.equal(logits(served, "served"), served_before) and torch.equal(logits(served, None), bare_before)
    assert served.adapters.active == "served" and not training_keys(served)
    assert not served.llm.model.training and not served.llm.model.is_gradient_checkpointing
    assert not torch.equal(logits(served, "new"), served_before)  # the new adapter was registered and differs


def test_a_request_is_served_while_a_shared_base_run_is_in_progress(served, toy_dataset, tmp_path):
    expected = served.generate(["Alpha Bravo"], max_new_tokens=6, adapter="served")
    paused, resumed, answers = threading.Event(), threading.Event(), []

    def progress(event):  # runs in the training thread between two steps of the run
        if event["phase"] == "training" and event["step"] == 1:
            paused.set()
            assert resumed.wait(60), "the request never finished"

    run = {}
    trainer = threading.Thread(target=lambda: run.update(r=run_finetune(
        spec_for(tmp_path / "adapters" / "mid", share_base="share"), toy_dataset, served, progress=progress)))
    trainer.start()
    assert paused.wait(120)
    request = threading.Thread(target=lambda: answers.append(served.generate(["Alpha Bravo"], max_new_tokens=6,
                                                                             adapter="served")))
    request.start()
    request.join(30)
    finished = not request.is_alive()
    resumed.set()
    trainer.join(120)
    assert finished and answers == [expected]  # served mid-run, with its own adapter, not the training one
    assert run["r"]["status"] == "done" and run["r"]["steps"] == 3


@pytest.mark.parametrize("how", ["cancel", "error"])
def test_a_stopped_run_leaves_no_training_adapter(served, toy_dataset, tmp_path, how):
    before = logits(served, "served")
    cancel = threading.Event()

    def progress(event):
        if event["phase"] == "training" and event["step"] == 1:
            if how == "error":
                raise RuntimeError("out of memory")
            cancel.set()
    spec = spec_for(tmp_path / "adapters" / "stop", share_base="share", eval_every=0)
    if how == "error":
        with pytest.raises(RuntimeError, match="out of memory"):
            run_finetune(spec, toy_dataset, served, progress=progress, cancel=cancel)
    else:
        assert run_finetune(spec, toy_dataset, served, progress=progress, cancel=cancel)["status"] == "cancelled"
    assert not training_keys(served) and list(served.adapters.loaded) == ["served"]
    assert served.adapters.active == "served" and torch.equal(logits(served, "served"), before)


def test_a_failed_run_on_a_bare_model_leaves_it_bare(service, toy_dataset, tmp_path):
    with pytest.raises(ValueError, match="no_such_proj"):
        run_finetune(spec_for(tmp_path / "adapters" / "x", share_base="share", lora_targets="no_such_proj"),
                     toy_dataset, service)
    with pytest.raises(ValueError, match="not an adapter folder"):
        run_finetune(spec_for(tmp_path / "adapters" / "y", share_base="share", init_adapter=str(tmp_path)),
                     toy_dataset, service)
    assert service.adapters.peft is None
    assert not any("lora" in n for n, _ in service.llm.model.named_modules())

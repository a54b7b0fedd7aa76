import pytest
import torch

from gpt2_lightning.apps.job import run
from gpt2_lightning.errors import CheckpointMismatchError
from gpt2_lightning.export.folder import export_model, load_export
from gpt2_lightning.export.load import load_model
from gpt2_lightning.model.gpt import GPTConfig, GPTModel
from gpt2_lightning.train.checkpoints import model_from_checkpoint
from tests.conftest import TINY_RUN, compose_train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    run(compose_train(out, *TINY_RUN, "trainer.max_steps=2", "export=true", "data.prompt_style=phi3"))
    return out


def same_logits(a: GPTModel, b: GPTModel) -> bool:
    idx = torch.randint(0, 50257, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(a.eval()(idx), b.eval()(idx))


def test_export_round_trips_and_stores_the_tied_head_once(tmp_path):
    torch.manual_seed(1)
    model = GPTModel(GPTConfig(vocab_size=50257, context_length=32, emb_dim=16, n_layers=1, n_heads=2))
    export_model(model, tmp_path, prompt_style="phi3")
    loaded, meta = load_export(tmp_path)
    assert meta["prompt_style"] == "phi3" and loaded.cfg == model.cfg
    assert same_logits(model, loaded)
    assert loaded.out_head.weight is loaded.tok_emb.weight
    assert (tmp_path / "model.safetensors").stat().st_size < 50257 * 16 * 4 * 1.2


def test_checkpoint_alone_rebuilds_the_model_with_its_prompt_style(tiny_run):
    from_ckpt, meta = model_from_checkpoint(tiny_run / "checkpoints" / "last.ckpt")
    assert meta["prompt_style"] == "phi3" and from_ckpt.cfg.emb_dim == 64
    from_run, run_meta = load_model(tiny_run)  # a run directory: its export
    assert run_meta["prompt_style"] == "phi3"
    best = sorted((tiny_run / "checkpoints").glob("best-*.ckpt"))[0]
    assert same_logits(from_run, model_from_checkpoint(best)[0])  # the export is the best weights


def test_truncated_corrupt_and_foreign_checkpoints_are_named(tiny_run, tmp_path):
    data = (tiny_run / "checkpoints" / "last.ckpt").read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointMismatchError, match=f"{truncated}: not a readable checkpoint"):
        model_from_checkpoint(truncated)
    text = tmp_path / "notes.ckpt"
    text.write_text("hello")
    with pytest.raises(CheckpointMismatchError, match=f"{text}: not a readable checkpoint"):
        model_from_checkpoint(text)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointMismatchError, match="not a gpt2-lightning training checkpoint"):
        model_from_checkpoint(foreign)
    with pytest.raises(CheckpointMismatchError, match="no such checkpoint file"):
        model_from_checkpoint(tmp_path / "missing.ckpt")


def test_pickled_code_in_a_checkpoint_is_never_run(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("open({!r}, 'w').write('pwned')".format(str(tmp_path / "pwned")),))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"gpt_config": Evil()}}, path)
    with pytest.raises(CheckpointMismatchError, match="not a readable checkpoint"):
        model_from_checkpoint(path)
    assert not (tmp_path / "pwned").exists()

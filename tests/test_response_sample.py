"""The answer a training run logs after each validation, as the run's own generation computes it."""

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gpt2_lightning.apps.job import run
from gpt2_lightning.backends import ExecutionPlan, Workload
from gpt2_lightning.backends.machine import machine
from gpt2_lightning.generation.placement import generation_copy
from gpt2_lightning.generation.respond import answer_batch
from gpt2_lightning.generation.sampling import SamplingParams
from gpt2_lightning.model.gpt import GPTConfig, GPTModel
from gpt2_lightning.train.checkpoints import model_from_checkpoint
from tests.conftest import TINY_RUN, compose_train

# Training in fp32, generation in bf16: the plan of a CPU where bf16 decodes faster.
PLAN = ExecutionPlan("cpu", machine(), Workload("bfloat16"), "32-true", Workload("float32", loss="chunked"))
RECORD = {"instruction": "Rewrite the sentence using a simile.", "input": "The car is very fast."}


def logged_samples(tensorboard_dir) -> dict[int, str]:
    """step -> the sample_response text logged to TensorBoard."""
    samples = {}
    for events in tensorboard_dir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"tensors": 0})
        acc.Reload()
        if "sample_response/text_summary" not in acc.Tags()["tensors"]:
            continue
        for event in acc.Tensors("sample_response/text_summary"):
            samples[event.step] = event.tensor_proto.string_val[0].decode()
    return samples


def test_a_generation_copy_holds_the_weights_in_the_plans_dtype_and_leaves_the_model_as_it_is():
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=300, context_length=32, emb_dim=16, n_layers=1, n_heads=2)).train()
    copy = generation_copy(model, PLAN)
    assert {p.dtype for p in copy.parameters()} == {torch.bfloat16}
    assert copy.out_head.weight is copy.tok_emb.weight  # still tied
    assert not copy.training and not any(p.requires_grad for p in copy.parameters())
    assert {p.dtype for p in model.parameters()} == {torch.float32} and model.training
    for (name, theirs), ours in zip(model.state_dict().items(), copy.state_dict().values()):
        assert torch.equal(ours, theirs.to(torch.bfloat16)), name


def test_the_sample_answer_is_generated_as_the_plan_generates_from_the_weights_of_its_step(tmp_path):
    plan_file = PLAN.save(tmp_path)
    cfg = compose_train(tmp_path / "run", *TINY_RUN, f"plan={plan_file}", "trainer.max_steps=2",
                        "trainer.val_check_interval=2", "data.batch_size=4",
                        f"callbacks.response_sample.instruction={RECORD['instruction']}",
                        f"callbacks.response_sample.input={RECORD['input']}",
                        "callbacks.response_sample.max_new_tokens=16")
    generating_dtypes = set()  # training and validation call hidden_states; only generation calls forward

    def record_dtype(module, args, output):
        if isinstance(module, GPTModel):
            generating_dtypes.add(module.tok_emb.weight.dtype)

    hook = torch.nn.modules.module.register_module_forward_hook(record_dtype)
    try:
        run(cfg)
    finally:
        hook.remove()
    assert generating_dtypes == {torch.bfloat16}
    samples = logged_samples(tmp_path / "run" / "tensorboard")
    assert sorted(samples) == [2]  # the one validation, at the last step: last.ckpt's weights
    model, meta = model_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    [answer] = answer_batch(generation_copy(model, PLAN), [RECORD], meta["prompt_style"], SamplingParams(16))
    assert samples[2].endswith(answer.replace("\n", "  \n"))

"""Weight streaming (workers.streaming): a Hugging Face directory over the job's memory is analysed with
one block's weights resident at a time, and gives the table the resident model gives."""

import pytest
import torch

pytest.importorskip("transformers")

from tests.utils.hf_factories import save_tiny, tokenizer, write_jsonl  # noqa: E402
from workers.errors import AnalysisError  # noqa: E402
from workers.jobs import run_analysis_job  # noqa: E402
from workers.streaming import _index, _read, fp32_weight_bytes, load_streamed, store_of  # noqa: E402

CANDIDATES = ["int2", "int4", "int8_g128", "fp8_e4m3"]
LIMIT_MB = "1"  # below the weights of the hidden-128 models here (1.1-1.6 MiB in float32)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("streaming")
    made = {kind: save_tiny(kind, root / kind, hidden=128) for kind in ("gpt2", "llama")}
    made["text"] = write_jsonl(root / "calib.jsonl")
    return made


def job(dirs, kind, **options):
    return run_analysis_job({
        "model": {"format": "hf", "path": dirs[kind]}, "dataset_path": dirs["text"], "candidates": CANDIDATES,
        "seed": 5, "metric": "input_covariance",
        "options": {"max_samples": 8, "max_length": 10, "batch_size": 4, "device": "cpu", **options},
    })


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("weighting", ["none", "fisher"])
def test_streamed_weights_give_the_resident_table(dirs, kind, weighting, monkeypatch):
    resident = job(dirs, kind, weighting=weighting)
    monkeypatch.setenv("BITPLAN_JOB_MEMORY_LIMIT_MB", LIMIT_MB)
    streamed = job(dirs, kind, weighting=weighting)
    assert resident["provenance"]["metric_run"]["weights"] == "resident"
    assert resident["provenance"]["weight_loading"]["weights"] == "resident"
    run = streamed["provenance"]["metric_run"]
    assert run["weights"] == "streamed" and run["input_statistics"] == "blocks" and run["blocks"] == 2
    assert streamed["provenance"]["weight_loading"]["weights"] == "streamed"
    assert run["weight_bytes"] == fp32_weight_bytes(dirs[kind])
    assert 0 < run["peak_resident_weight_bytes"] < 0.75 * run["weight_bytes"]  # outside + one block
    for a, b in zip(resident["layers"], streamed["layers"], strict=True):
        assert a["name"] == b["name"]
        for ca, cb in zip(a["candidates"], b["candidates"], strict=True):
            assert cb["damage"] == pytest.approx(ca["damage"], rel=1e-6, abs=1e-30), (a["name"], ca["candidate"])
            assert cb["perturbation"] == ca["perturbation"]
            assert cb["bops"] == ca["bops"]
    assert streamed["ties"] == resident["ties"]


def test_over_the_limit_whole_is_refused_naming_the_option(dirs, monkeypatch):
    monkeypatch.setenv("BITPLAN_JOB_MEMORY_LIMIT_MB", LIMIT_MB)
    with pytest.raises(AnalysisError, match=r"exceed the memory this job may use.*options.streaming='auto'"):
        job(dirs, "llama", streaming="whole")
    with pytest.raises(AnalysisError, match="refine_bits"):
        job(dirs, "llama", refine_bits=4.0)
    assert job(dirs, "llama", streaming="blocks")["provenance"]["metric_run"]["weights"] == "streamed"


def test_over_the_limit_a_metric_that_cannot_stream_names_the_one_that_can(dirs, monkeypatch):
    monkeypatch.setenv("BITPLAN_JOB_MEMORY_LIMIT_MB", LIMIT_MB)
    request = {"model": {"format": "hf", "path": dirs["llama"]}, "dataset_path": dirs["text"], "candidates": CANDIDATES,
               "options": {"max_samples": 4, "max_length": 10, "device": "cpu"}}  # the default metric
    with pytest.raises(AnalysisError, match=r"exceed the memory.*metric 'sampled_gauss_newton' needs every weight"
                                            r" resident.*use metric 'input_covariance'"):
        run_analysis_job(request)


def test_a_model_without_repeated_blocks_says_why_it_cannot_stream(tmp_path, monkeypatch):
    import transformers as tf

    tok = tokenizer()
    model = tf.LlamaForCausalLM(tf.LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=1,
                                               num_attention_heads=2, num_key_value_heads=1, vocab_size=len(tok),
                                               max_position_embeddings=64, bos_token_id=1, eos_token_id=1,
                                               pad_token_id=2))
    model.save_pretrained(tmp_path / "one", safe_serialization=True)
    tok.save_pretrained(tmp_path / "one")
    monkeypatch.setenv("BITPLAN_JOB_MEMORY_LIMIT_MB", LIMIT_MB)
    with pytest.raises(AnalysisError, match=r"exceed the memory.*cannot be streamed: no repeated blocks"):
        job({"one": str(tmp_path / "one"), "text": write_jsonl(tmp_path / "c.jsonl")}, "one")


def test_streamed_model_holds_only_whats_outside_the_blocks(dirs):
    model = load_streamed(dirs["llama"])
    store = store_of(model)
    resident = {n for n, p in model.named_parameters() if not p.is_meta}
    assert resident == {"model.embed_tokens.weight", "model.norm.weight"}
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as from_pretrained ties
    assert not model.model.rotary_emb.inv_freq.is_meta  # computed buffers stay real
    with store.holding(store.blocks[1]):
        assert not store.blocks[1].mlp.up_proj.weight.is_meta and store.blocks[0].mlp.up_proj.weight.is_meta
    assert store.blocks[1].mlp.up_proj.weight.is_meta


def test_tensors_read_at_their_offsets_match_safetensors(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(3, 5, generator=gen), "b": torch.randn(7, generator=gen).to(torch.bfloat16),
               "c": torch.randn(2, 2, generator=gen).to(torch.float16), "d": torch.arange(4), "e": torch.empty(0, 3)}
    save_file(tensors, tmp_path / "x.safetensors")
    index = _index(str(tmp_path))
    with safe_open(tmp_path / "x.safetensors", "pt") as fh:
        for key in tensors:
            want = fh.get_tensor(key)
            got = _read(index[key])
            assert got.shape == want.shape
            assert torch.equal(got, want.to(torch.float32) if want.is_floating_point() else want)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_an_upload_over_the_limit_is_inspected_without_loading_it(dirs, kind, monkeypatch):
    from workers.jobs import describe_model_job

    resident = describe_model_job({"format": "hf", "path": dirs[kind]})
    monkeypatch.setenv("BITPLAN_JOB_MEMORY_LIMIT_MB", LIMIT_MB)
    assert describe_model_job({"format": "hf", "path": dirs[kind]}) == resident


def test_a_nan_weight_is_refused_by_the_streamed_inspection(tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    from workers.errors import ModelLoadError
    from workers.jobs import describe_model_job

    path = save_tiny("llama", tmp_path / "nan", hidden=128)
    state = load_file(f"{path}/model.safetensors")
    state["model.layers.1.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(state, f"{path}/model.safetensors", metadata={"format": "pt"})
    monkeypatch.setenv("BITPLAN_JOB_MEMORY_LIMIT_MB", LIMIT_MB)
    with pytest.raises(ModelLoadError, match="model.layers.1.mlp.up_proj.weight.*NaN"):
        describe_model_job({"format": "hf", "path": path})


def test_other_metrics_refuse_a_streamed_model(dirs):
    from workers.analysis import analyse
    from workers.data import Calibration
    from workers.metrics import get_metric
    from workers.quantizers import parse_candidates

    cal = Calibration(torch.randint(4, 30, (4, 8)), None, batch_size=4, token_ids=True)
    with pytest.raises(AnalysisError, match="only input_covariance"):
        analyse(load_streamed(dirs["llama"]), cal, parse_candidates(["int4"]), get_metric("mse", {}))


# Under RLIMIT_AS (the job child's limit) what counts is address space, so these run in a fresh process
# with the limit set just above what it holds once torch and the model's class are imported.
_UNDER_LIMIT = r"""
import json, resource, sys
import torch
from workers.hf import hf_config_and_class
from workers.models import ModelSource
from workers.streaming import build_on_meta, plan_weights

def vm_size():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) * 1024

path, what, headroom = sys.argv[1], sys.argv[2], int(sys.argv[3]) * 2**20
if what == "build":
    hf_config_and_class(path)  # the class's modules imported: what remains is the build itself
    resource.setrlimit(resource.RLIMIT_AS, (vm_size() + headroom,) * 2)
    model = build_on_meta(path)
    print(json.dumps({"meta": all(p.is_meta for p in model.parameters())}))
else:
    limit = vm_size() + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit,) * 2)
    plan = plan_weights(ModelSource.from_dict({"format": "hf", "path": path}), "auto", torch.device("cpu"))
    hf_config_and_class(path)  # as a resident load does next
    print(json.dumps({"plan_free_mib": plan["limit_mib"], "free_now_mib": (limit - vm_size()) / 2**20}))
"""


def _under_limit(path: str, what: str, headroom_mib: int) -> dict:
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("BITPLAN_JOB_MEMORY_LIMIT_MB", None)
    done = subprocess.run([sys.executable, "-c", _UNDER_LIMIT, path, what, str(headroom_mib)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_building_on_meta_takes_no_address_space_for_the_weights(tmp_path):
    """Each parameter is allocated, then moved to the meta device: glibc kept those blocks in a heap
    that grew by ~70 % of the float32 weights, so a model over the limit failed to build (ENOMEM)."""
    import transformers as tf
    from safetensors.torch import save_file

    config = tf.LlamaConfig(hidden_size=512, intermediate_size=1536, num_hidden_layers=16,
                            num_attention_heads=8, num_key_value_heads=8, vocab_size=64, max_position_embeddings=64)
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(tmp_path)  # 208 MiB of float32 weights; only the config is read
    save_file({"unused": torch.zeros(1)}, tmp_path / "model.safetensors")
    assert _under_limit(str(tmp_path), "build", 64) == {"meta": True}


def test_the_weights_plan_counts_the_address_space_of_the_models_class(dirs):
    """Importing the model's transformers modules maps ~250 MiB (Llama), which a resident load needs too:
    the free memory the plan goes by is measured after it."""
    got = _under_limit(dirs["llama"], "plan", 2048)
    assert got["plan_free_mib"] <= got["free_now_mib"] + 4, got


def test_a_mapping_refused_for_a_block_is_an_allocator_failure(monkeypatch):
    """ENOMEM from mmap (the streamed weights' own mappings, under RLIMIT_AS) is out of memory, so the
    analysis backs off and says what to lower, instead of failing the forward as a model error."""
    import errno
    import mmap

    from workers.memory import is_allocator_failure
    from workers.streaming import _pages

    def refuse(*args, **kwargs):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(mmap, "mmap", refuse)
    with pytest.raises(MemoryError) as caught:
        _pages(4096)
    assert is_allocator_failure(caught.value)


def test_a_block_that_fails_to_load_or_run_is_put_back(dirs, monkeypatch):
    """An out-of-memory while a block's weights are read, or while it runs, leaves no block held: the
    analysis's back-off retries at a smaller batch and must read the whole block again (a half-read block
    stayed held and the retry ran on meta weights)."""
    model = load_streamed(dirs["llama"])
    store = store_of(model)
    x = torch.randint(4, 30, (2, 8))
    with torch.no_grad(), store.streaming():
        want = model(x)
    real_read, calls = store.read, [0]

    def read_then_fail(p):
        calls[0] += 1
        if calls[0] == 3:
            raise MemoryError("cannot allocate memory")
        return real_read(p)

    monkeypatch.setattr(store, "read", read_then_fail)
    with pytest.raises(MemoryError), torch.no_grad(), store.streaming():
        model(x)
    assert store.holds == [0, 0] and all(p.is_meta for b in store.blocks for p in b.parameters())
    monkeypatch.setattr(store, "read", real_read)

    mlp = store.blocks[1].mlp
    monkeypatch.setattr(mlp, "forward", lambda h: (_ for _ in ()).throw(MemoryError("cannot allocate memory")))
    with pytest.raises(MemoryError), torch.no_grad(), store.streaming():
        model(x)
    assert store.holds == [0, 0] and all(p.is_meta for b in store.blocks for p in b.parameters())
    monkeypatch.undo()
    with torch.no_grad(), store.streaming():
        assert torch.equal(model(x), want)
    assert store.resident == sum(p.numel() * 4 for p in model.parameters() if not p.is_meta)

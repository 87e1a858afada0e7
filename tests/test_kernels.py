"""The kernels family: the bundled local kernel repository runs the whole path (mapping, kernelize,
requested == effective, parity) offline; hub kernels load from a local cache; planted faults fail with
their cause; skip reasons say exactly what this stack lacks."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pytest_infer.core.requirements import Requirements
from pytest_infer.core.stack import Stack
from pytest_infer.techniques.kernels.support import (
    HubRef,
    cached_snapshot,
    fixture_repository,
    hub_availability_reason,
    kernels_drift_reason,
    pin_check,
    repository_digest,
    transformers_kernels_range,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "89abcdef0123456789abcdef0123456789abcdef"


def _stack(**packages: str | None) -> Stack:
    return Stack(device_kind="cpu", device_name="test cpu", packages=packages)


# --- unit: version drift, pins, the hub cache ------------------------------------------------------


def test_drift_reason_states_transformers_range_and_found_version() -> None:
    import transformers.utils.import_utils as iu

    assert transformers_kernels_range.__wrapped__() == (iu.KERNELS_MIN_VERSION, iu.KERNELS_MAX_VERSION)
    lo, hi = iu.KERNELS_MIN_VERSION, iu.KERNELS_MAX_VERSION
    hi_short = hi[:-2] if hi.endswith(".0") and hi.count(".") == 2 else hi
    reason = kernels_drift_reason(_stack(transformers="5.24.0", kernels="0.17.2"))
    assert reason == f"transformers 5.24.0 requires kernels>={lo},<{hi_short}; found kernels 0.17.2"
    assert kernels_drift_reason(_stack(transformers="5.24.0", kernels=lo)) is None
    assert kernels_drift_reason(_stack(transformers="5.24.0", kernels=hi)) is not None  # the upper bound excludes
    missing = kernels_drift_reason(_stack(transformers="5.24.0", kernels=None))
    assert (
        missing
        == f"transformers 5.24.0 requires kernels>={lo},<{hi_short}; kernels is not installed (pip install 'kernels>={lo},<{hi_short}')"
    )


def test_drift_range_is_read_from_the_installed_source_without_importing(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import transformers.utils.import_utils as iu

    monkeypatch.delitem(sys.modules, "transformers.utils.import_utils")
    assert transformers_kernels_range.__wrapped__() == (iu.KERNELS_MIN_VERSION, iu.KERNELS_MAX_VERSION)


def test_pins_are_commits_and_unpinned_refs_are_refused_only_under_strict() -> None:
    assert HubRef("org/k", revision=COMMIT).pinned
    assert not HubRef("org/k", revision="main").pinned
    assert not HubRef("org/k", version=3).pinned
    with pytest.raises(ValueError, match="exactly one of revision= or version="):
        HubRef("org/k")
    check = pin_check(HubRef("org/k", version=3))
    needs = Requirements(strict=(check,))
    assert needs.check(_stack()) is None  # allowed (with a warning when loaded)
    reason = needs.check(_stack(), strict=True)
    assert reason is not None and reason.startswith("hub kernel org/k@v3 is not pinned: 'v3' is a version branch")
    assert "revision='<40-hex commit>'" in reason
    assert Requirements(strict=(pin_check(HubRef("org/k", revision=COMMIT)),)).check(_stack(), strict=True) is None


def _fake_hub_cache(root: Path, repo_id: str, commit: str, ref: str | None = None, kernel_id: str = "_hub") -> Path:
    folder = root / ("kernels--" + repo_id.replace("/", "--"))
    snapshot = folder / "snapshots" / commit
    shutil.copytree(fixture_repository() / "build", snapshot / "build", ignore=shutil.ignore_patterns("__pycache__"))
    meta = snapshot / "build" / "torch-universal" / "metadata.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "id": kernel_id}))
    if ref is not None:
        (folder / "refs").mkdir(parents=True)
        (folder / "refs" / ref).write_text(commit)
    return snapshot


def test_hub_availability_reasons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    snapshot = _fake_hub_cache(tmp_path, "org/norm", COMMIT, ref="v1")
    pinned, by_version, absent = (
        HubRef("org/norm", revision=COMMIT),
        HubRef("org/norm", version=1),
        HubRef("org/x", revision=OTHER),
    )
    assert cached_snapshot(pinned, tmp_path) == snapshot
    assert cached_snapshot(by_version, tmp_path) == snapshot
    assert cached_snapshot(absent, tmp_path) is None

    def unreachable() -> str:
        return "huggingface.co:443: OSError: no route"

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub_availability_reason(pinned, root=tmp_path, probe=unreachable) is None
    assert hub_availability_reason(absent, root=tmp_path, probe=unreachable) == (
        f"hub kernel org/x@{OTHER} not in the local cache ({tmp_path}) and HF_HUB_OFFLINE is set"
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert hub_availability_reason(absent, root=tmp_path, probe=unreachable) == (
        f"hub kernel org/x@{OTHER} not in the local cache and the hub is unreachable (huggingface.co:443: OSError: no route)"
    )
    cached_online = hub_availability_reason(pinned, root=tmp_path, probe=unreachable)
    assert cached_online is not None and "export HF_HUB_OFFLINE=1 to load the cached snapshot" in cached_online
    assert hub_availability_reason(absent, root=tmp_path, probe=lambda: None) is None


def test_bundled_repository_is_tiny_loadable_and_tracked(tmp_path: Path) -> None:
    from kernels import get_local_kernel

    repo = fixture_repository()
    files = [p for p in repo.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert sum(p.stat().st_size for p in files) < 8192, "keep the bundled kernel repository a few KB"
    kernel = get_local_kernel(repo)
    assert callable(kernel.attention) and kernel.layers.RMSNorm.__init__ is __import__("torch").nn.Module.__init__
    copy = tmp_path / "copy"
    shutil.copytree(repo, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert repository_digest(copy) == repository_digest(repo)
    (copy / "build" / "torch-universal" / "infer_kernels" / "layers.py").write_text("# changed\n")
    assert repository_digest(copy) != repository_digest(repo)
    root = Path(__file__).resolve().parent.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(
        ["git", "-C", str(root), "check-ignore", "-v", *(str(p) for p in files)], capture_output=True, text=True
    )
    assert ignored.stdout == "", f"the bundled kernel repository is git-ignored, it would not ship:\n{ignored.stdout}"


# --- real sessions -------------------------------------------------------------------------------------

PROVENANCE = """
import pytest
from pytest_infer.techniques.kernels.support import fixture_repository, provenance_lines, repository_digest


@pytest.mark.infer_techniques("kernels_local_rmsnorm", "kernels_local_attention")
def test_provenance(infer_case, infer_model_loader):
    [entry] = infer_model_loader(infer_case).infer_provenance
    assert entry["kind"] == "local" and entry["technique"] == infer_case.technique.name
    assert entry["repository"] == str(fixture_repository().resolve())
    assert entry["digest"] == repository_digest(fixture_repository())
    if entry.get("kernel_layer"):
        assert entry["modules"] == 9  # 4 layers x 2 norms + the final norm of the tiny llama
        assert entry["registered_by_pytest_infer"] == ["LlamaRMSNorm"]
    [line] = provenance_lines(infer_model_loader(infer_case))
    assert line.startswith("kernel: ") and str(fixture_repository().resolve()) in line and entry["digest"][:19] in line
"""


def test_local_kernels_pass_parity_padding_and_generation(pytester: pytest.Pytester, run_infer) -> None:
    from pytest_infer.core.detect import detect_stack

    pytester.makepyfile(test_kernel_provenance=PROVENANCE)
    result = run_infer(
        "--infer-suite", "parity,generation", "--infer-technique", "kernels", "--infer-new-tokens", "16",
        "-v", "-rs", "test_kernel_provenance.py",
    )  # fmt: skip
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0, result.stdout.str()
    for name in ("kernels_local_rmsnorm", "kernels_local_attention"):
        for test in ("test_logit_parity", "test_padded_batches", "test_generation_parity", "test_provenance"):
            result.stdout.fnmatch_lines([f"*{test}?cpu-float32-{name}? PASSED*"])
    drift = kernels_drift_reason(detect_stack("cpu"))
    assert drift is not None and "requires kernels>=" in drift
    result.stdout.fnmatch_lines(
        [
            "*SKIPPED * kernels_hub_rmsnorm: needs a cuda or rocm device, running on cpu",
            f"*SKIPPED * kernels_hub_flash_attn: {drift}",
            f"*SKIPPED * kernels_use_kernels_local: {drift}",
        ],
        consecutive=False,
    )


PLANTED = """
import json
import shutil
from pathlib import Path

from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from pytest_infer import Technique
from pytest_infer.techniques.kernels.support import fixture_repository
from pytest_infer.techniques.kernels import local_attention_technique, local_layer_technique

HERE = Path(__file__).parent


def copy_repo(name, kernel_id, file=None, old=None, new=None):
    # a copy of the bundled repository with its own metadata id and, optionally, one line changed
    dest = HERE / "kernels" / name
    if not dest.exists():
        shutil.copytree(fixture_repository(), dest, ignore=shutil.ignore_patterns("__pycache__"))
        variant = dest / "build" / "torch-universal"
        meta = variant / "metadata.json"
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "id": kernel_id}))
        if file:
            source = variant / "infer_kernels" / file
            text = source.read_text()
            assert old in text
            source.write_text(text.replace(old, new))
    return dest


# RMSNorm written for Gemma's (1 + weight) convention: wrong scale on a Llama
GEMMA = copy_repo("gemma-scale", "_planted_gemma_scale", "layers.py", "return self.weight * normed", "return (1.0 + self.weight) * normed")
# attention that ignores the scaling it is given (1/d instead of 1/sqrt(d))
UNSCALED = copy_repo("unscaled", "_planted_unscaled", "attention.py", "scale = query.shape[-1] ** -0.5 if scaling is None else scaling", "scale = 1.0 / query.shape[-1]")
# a copy that kept the bundled repository's metadata id
SAME_ID = copy_repo("same-id", "_infer_kernels_torch_universal")


def unkernelize(model):
    # something after kernelize puts the original forward back
    for module in model.modules():
        module.__dict__.pop("forward", None)
    return model


def swap_norms(model):
    # model surgery after kernelize: fresh norm modules (original forward) replace the kernelized ones
    for layer in model.model.layers:
        old = layer.input_layernorm
        new = type(old)(old.weight.shape[0], eps=old.variance_epsilon).to(old.weight.device, old.weight.dtype)
        new.load_state_dict(old.state_dict())
        layer.input_layernorm = new
    return model


def reroute(model):
    # after loading, the technique's attention name is re-registered to plain sdpa
    AttentionInterface.register(model.config._attn_implementation, sdpa_attention_forward)
    return model


def override():
    AttentionInterface.register("kernels_local_attention", sdpa_attention_forward)


def pytest_infer_register_techniques(registry):
    registry.add(local_layer_technique("gemma_scale_rmsnorm", GEMMA))
    registry.add(local_attention_technique("unscaled_attention", UNSCALED))
    registry.add(local_layer_technique("cuda_only_mapping", fixture_repository(), devices=("cuda",)))
    registry.add(local_layer_technique("same_id_repo", SAME_ID))
    # the mapping keyed by the class name, not by the layer name Transformers declares ("RMSNorm")
    registry.add(local_layer_technique("class_name_mapping", fixture_repository(), kernel_layer="LlamaRMSNorm"))
    registry.add(Technique(name="swap_norms", family="custom", prepare=swap_norms))
    registry.add(Technique(name="unkernelize", family="custom", prepare=unkernelize))
    registry.add(Technique(name="reroute", family="custom", prepare=reroute))
    registry.add(Technique(name="override", family="custom", setup=override))
"""


def test_planted_kernel_faults_fail_with_their_cause(pytester: pytest.Pytester, run_infer) -> None:
    pytester.makeconftest(PLANTED)
    techniques = (
        "kernels_local_rmsnorm,gemma_scale_rmsnorm,unscaled_attention,cuda_only_mapping,same_id_repo,"
        "kernels_local_rmsnorm+unkernelize,kernels_local_rmsnorm+swap_norms,class_name_mapping,"
        "kernels_local_attention+reroute,kernels_local_attention+override"
    )
    result = run_infer("--infer-suite", "parity", "--infer-technique", techniques, "-k", "logit_parity", "-v")
    result.assert_outcomes(passed=1, failed=9)
    result.stdout.fnmatch_lines(["*test_logit_parity?cpu-float32-kernels_local_rmsnorm? PASSED*"])
    out = result.stdout.str()
    # a wrong kernel: parity fails and names the layer
    result.stdout.fnmatch_lines(
        [
            "*logit parity FAILED: gemma_scale_rmsnorm (float32)*",
            "*first diverging layer: model.layers.0 (in its input_layernorm): relative error *",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*logit parity FAILED: unscaled_attention (float32)*",
            "*first diverging layer: model.layers.0 (in its self_attn): relative error *",
        ]
    )
    # a mapping that silently does not apply: requested != effective
    assert "cuda_only_mapping: requested kernel layer RMSNorm <- infer-kernels:RMSNorm (local, " in out
    result.stdout.fnmatch_lines(
        [
            "*but kernelize kept the original forward of 9 of 9 LlamaRMSNorm modules (model.layers.0.input_layernorm, *"
            "the kernel mapping has no entry for device 'cpu' (mapped: cuda); kernels falls back to the original forward silently"
        ]
    )
    # two repositories with one metadata id: kernels runs the other one's layer
    result.stdout.fnmatch_lines(
        [
            "same_id_repo: requested kernel layer RMSNorm <- same-id:RMSNorm (local, */kernels/same-id), but kernels "
            "loaded RMSNorm from */fixtures/kernels/infer-kernels/build/torch-universal/infer_kernels/layers.py, "
            "outside that repository: two kernel repositories share the metadata id '_infer_kernels_torch_universal'*"
        ]
    )
    # the kernel replaced after kernelize: caught while running
    result.stdout.fnmatch_lines(
        [
            "kernels_local_rmsnorm: requested kernel layer RMSNorm *, but during the last call 9 of 9 kernelized "
            "modules ran another forward (model.layers.0.input_layernorm ran LlamaRMSNorm.forward, *"
        ]
    )
    # kernelized modules cut out of the model after kernelize: caught while running
    result.stdout.fnmatch_lines(
        [
            "kernels_local_rmsnorm: requested kernel layer RMSNorm *, but 4 of 9 kernelized modules never ran in 1 "
            "forward(s) (model.layers.0.input_layernorm, model.layers.1.input_layernorm, *): the model bypassed them"
        ]
    )
    # a mapping under a layer name no module is registered for
    result.stdout.fnmatch_lines(
        [
            "class_name_mapping: requested kernel layer LlamaRMSNorm <- infer-kernels:RMSNorm (local, *), but no module "
            "of LlamaForCausalLM is registered for kernel layer 'LlamaRMSNorm' (registered layer classes: *): "
            "nothing was kernelized"
        ]
    )
    # attention: re-registered before loading (static) and after loading (while running)
    result.stdout.fnmatch_lines(
        [
            "kernels_local_attention: requested attention infer-kernels:attention (local, *), but the attention "
            "implementation registered as 'kernels_local_attention' is sdpa_attention_forward from "
            "transformers.integrations.sdpa_attention: the kernel would not run"
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "kernels_local_attention: requested attention infer-kernels:attention (local, *), but it ran 0 of the "
            "* attention calls of * forward(s) x 4 layers: another attention implementation ran instead"
        ]
    )


HUB = f"""
from pytest_infer.techniques.kernels import hub_layer_technique


def pytest_infer_register_techniques(registry):
    for name, kw in (("hub_pinned", dict(revision="{COMMIT}")), ("hub_unpinned", dict(version=1))):
        registry.add(hub_layer_technique(name, "infer-test/rmsnorm", layer="RMSNorm", devices=("cpu",), **kw))
    registry.add(hub_layer_technique("hub_absent", "infer-test/absent", layer="RMSNorm", revision="{OTHER}", devices=("cpu",)))
"""

HUB_PROVENANCE = f"""
import pytest


@pytest.mark.infer_techniques("hub_pinned", "hub_unpinned")
def test_hub_provenance(infer_case, infer_model_loader):
    [entry] = infer_model_loader(infer_case).infer_provenance
    assert entry["kind"] == "hub" and entry["repository"] == "infer-test/rmsnorm"
    assert entry["resolved_revision"] == "{COMMIT}"
    assert entry["pinned"] == (infer_case.technique.name == "hub_pinned")
    assert entry["snapshot"].endswith("snapshots/{COMMIT}")
"""


@pytest.fixture
def hub_cache(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A hub cache holding ``infer-test/rmsnorm`` (a copy of the bundled repository) at a commit that
    branch ``v1`` points to, and the hub offline: the hub path of kernels runs without a network."""
    cache = pytester.path / "kernels-cache"
    _fake_hub_cache(cache, "infer-test/rmsnorm", COMMIT, ref="v1", kernel_id="_infer_hub_rmsnorm")
    monkeypatch.setenv("KERNELS_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytester.makeconftest(HUB)
    pytester.makepyfile(test_hub_provenance=HUB_PROVENANCE)
    return cache


def test_hub_kernels_load_from_the_cache_and_unpinned_ones_warn(hub_cache: Path, run_infer) -> None:
    result = run_infer(
        "--infer-suite", "parity", "--infer-technique", "hub_pinned,hub_unpinned,hub_absent",
        "-k", "logit_parity or provenance", "-v", "-rs", "-W", "always::UserWarning", "test_hub_provenance.py",
    )  # fmt: skip
    result.assert_outcomes(passed=4, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*test_logit_parity?cpu-float32-hub_pinned? PASSED*",
            "*test_logit_parity?cpu-float32-hub_unpinned? PASSED*",
            "*UnpinnedKernelWarning: hub_unpinned: hub kernel infer-test/rmsnorm@v1 is not pinned: 'v1' is a version "
            "branch that moves. Pin it to a commit: revision='<40-hex commit>'*",
            f"*SKIPPED * hub_absent: hub kernel infer-test/absent@{OTHER} not in the local cache ({hub_cache}) and "
            "HF_HUB_OFFLINE is set",
        ],
        consecutive=False,
    )
    assert "UnpinnedKernelWarning: hub_pinned" not in result.stdout.str()


def test_unpinned_hub_kernel_is_refused_under_strict(hub_cache: Path, run_infer) -> None:
    result = run_infer(
        "--infer-suite", "parity", "--infer-technique", "hub_pinned,hub_unpinned", "--infer-strict", "-k", "logit_parity"
    )  # fmt: skip
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*--infer-strict: hub_unpinned: hub kernel infer-test/rmsnorm@v1 is not pinned: 'v1' is a version branch "
            "that moves. Pin it to a commit: revision='<40-hex commit>'*"
        ]
    )


def test_provenance_reaches_the_report_and_the_report_section(pytester: pytest.Pytester, run_infer) -> None:
    result = run_infer(
        "--infer-suite", "parity", "--infer-technique", "kernels_local_rmsnorm", "-k", "logit_parity",
        "--infer-report", "report.json", "-rP",
    )  # fmt: skip
    result.assert_outcomes(passed=1)
    digest = repository_digest(fixture_repository())
    result.stdout.fnmatch_lines(
        [f"  kernel: layer RMSNorm from local repository {fixture_repository().resolve()} ({digest[:19]}); 9 RMSNorm *"]
    )
    [entry] = [r for r in json.loads((pytester.path / "report.json").read_text())["results"] if r.get("provenance")]
    assert entry["provenance"][0]["digest"] == digest


@pytest.mark.xfail(
    strict=True,
    raises=AttributeError,
    reason="transformers 5.24: KernelConfig(use_local_kernel=True) breaks from_pretrained(use_kernels=True): "
    "register_kernel_replacements_and_fusions rewrites the mapping to (repo, metadata) tuples, and "
    "create_compatible_mapping's local branch calls .split on them",
)
def test_transformers_local_kernel_config_defect(monkeypatch: pytest.MonkeyPatch) -> None:
    """The two steps ``from_pretrained(use_kernels=True, kernel_config=KernelConfig(..., use_local_kernel=True))``
    takes, run directly (on this stack Transformers' integration is off, so its ``kernels`` names are put
    back by hand): evidence for the known issue of ``kernels_use_kernels_local``. When Transformers fixes
    it, this XPASSes and fails: retire the known issue."""
    import kernels
    import transformers.utils.kernel_config as kernel_config
    from transformers import AutoConfig, KernelConfig, LlamaForCausalLM
    from transformers.integrations import hub_kernels
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from pytest_infer.core.resources import fixtures_dir

    monkeypatch.setattr(hub_kernels, "LocalLayerRepository", kernels.LocalLayerRepository)
    monkeypatch.setattr(kernel_config, "infer_device", lambda model: "cuda")  # KernelConfig refuses cpu
    monkeypatch.setattr(LlamaRMSNorm, "kernel_layer_name", "RMSNorm", raising=False)  # what the decorator sets
    config = AutoConfig.from_pretrained(fixtures_dir() / "tiny-llama")
    mapping = KernelConfig({"RMSNorm": f"{fixture_repository().resolve()}:RMSNorm"}, use_local_kernel=True)
    hub_kernels.register_kernel_replacements_and_fusions(LlamaForCausalLM, config, mapping)  # from_pretrained, step 1
    assert isinstance(mapping.kernel_mapping["RMSNorm"], tuple)
    model = LlamaForCausalLM(config)
    mapping.sanitize_kernel_mapping(model)  # set_use_kernels, step 2
    mapping.create_compatible_mapping(model)  # AttributeError: 'tuple' object has no attribute 'split'

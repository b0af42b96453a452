"""torch.export `.pt2` archives loaded without running code from the file, as far as torch allows.

`torch.export.load` is not safe on untrusted files (torch 2.13, torch/export/pt2_archive/_package.py):
a weight or constant whose payload entry says `use_pickle: true` goes through
`torch.load(weights_only=False)`, `opaque_obj_*` constants through `pickle.loads`, `custom_obj_*`
through the TorchScript unpickler, the sample inputs through `torch.load` with a silent fallback to
`weights_only=False`, legacy `data/weights/<model>.pt` files through pickle, and AOTInductor members
are shared libraries. Beyond pickle, the graph JSON itself is code: symbolic shape strings go to
`sympy.sympify` (which evaluates Python), call targets are looked up as any attribute path under
`torch` (`torch.os.system` resolves), and `ExportedProgram.module()` `exec`s the archive's
`guards_code`.

So this loader reads the archive itself: it refuses every pickled member with a message saying how to
re-export, reads weights and constants only from raw-bytes records, sample inputs only with
`weights_only=True`, checks every call target and symbolic expression against what torch.export
writes, and unlifts with `check_guards=False` (the guards only validate input shapes). It narrows
the attack surface; it is not the security boundary: the job child that calls it runs in a sandbox
(service.jobs.sandbox), because fx code generation and torch's deserializer remain large.

The pure-JSON checks (`archive_problems`) import no torch, so the API process runs them at upload.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

from workers.errors import ModelLoadError

__all__ = ["REEXPORT_HINT", "archive_problems", "load_pt2", "refusal"]

REEXPORT_HINT = (
    "re-export it with plain tensors: torch.export.save(torch.export.export(model, example_args), 'model.pt2') "
    "from a model whose parameters and buffers are ordinary torch.Tensor (not tensor subclasses such as "
    "quantized or DTensor weights: convert them with .dequantize() / .full_tensor() first) and that holds no "
    "TorchScript or opaque objects"
)

_TARGET_PREFIXES = ("torch.ops.", "_operator.", "math.")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# What torch.export writes in symbolic expressions: sympy constructors and assumptions, torch's sympy
# functions (ExportedProgramDeserializer.sympy_functions) and symbol names (s0, u3, ...).
_SYMPY_NAMES = frozenset(
    "Symbol Integer Rational Float Add Mul Pow Mod Max Min Abs Eq Ne Lt Le Gt Ge StrictLessThan "
    "StrictGreaterThan LessThan GreaterThan Equality Unequality And Or Not true false True False None oo zoo "
    "nan floor ceiling sqrt Piecewise ITE integer positive negative nonnegative nonpositive real finite "
    "commutative zero nonzero even odd FloorDiv ModularIndexing Where PythonMod CleanDiv CeilToInt FloorToInt "
    "CeilDiv LShift RShift PowByNatural FloatPow FloatTrueDiv IntTrueDiv IsNonOverlappingAndDenseIndicator "
    "TruncToFloat TruncToInt RoundToInt RoundDecimal ToFloat Identity BitwiseFn_bitwise_and BitwiseFn_bitwise_or "
    "BitwiseFn_bitwise_xor OpaqueUnaryFn_sqrt OpaqueUnaryFn_exp OpaqueUnaryFn_log".split()
)
_SYMBOL = re.compile(r"^[a-z]+\d+$")


def _names(zf: zipfile.ZipFile) -> tuple[str, list[str]]:
    """(prefix, member names without it): torch writes every record under one top folder."""
    names = zf.namelist()
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) != 1 or not all("/" in n for n in names):
        raise ModelLoadError("model: not a readable torch.export archive (expected one top folder holding "
                             "archive_format)")
    top = tops.pop()
    return top + "/", [n[len(top) + 1:] for n in names]


def _walk(node: Any, path: str = ""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from _walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value, path)


def _expr_problem(expr: str) -> str | None:
    if "__" in expr or "lambda" in expr or not re.fullmatch(r"[A-Za-z0-9_ '().,+\-*/%<>=!&|~^\[\]]*", expr):
        return f"symbolic expression {expr[:80]!r} is not one torch.export writes"
    inside_quotes = set(re.findall(r"'([^']*)'", expr))
    for name in _IDENTIFIER.findall(re.sub(r"'[^']*'", "''", expr)):
        if name not in _SYMPY_NAMES and not _SYMBOL.match(name):
            return f"symbolic expression {expr[:80]!r} names {name!r}, which torch.export never writes"
    for quoted in inside_quotes:
        if not _SYMBOL.match(quoted):
            return f"symbolic expression {expr[:80]!r} quotes {quoted!r}, not a symbol name"
    return None


def archive_problems(path: str | Path) -> list[str]:
    """Why this archive cannot be loaded without running code from it; [] when it can. No torch.
    ModelLoadError when it is no readable torch.export archive at all."""
    try:
        with zipfile.ZipFile(path) as zf:
            prefix, names = _names(zf)
            members = set(names)
            if "archive_format" not in members or "models/model.json" not in members:
                return ["not a torch.export archive from torch ≥ 2.8 (no archive_format / models/model.json): "
                        "older archives keep their weights pickled; " + REEXPORT_HINT]
            problems = []
            for legacy in ("data/weights/model.pt", "data/constants/model.pt"):
                if legacy in members:
                    problems.append(f"{legacy} is a pickled legacy weights file")
            if any(n.startswith("data/aotinductor/") for n in names):
                problems.append("data/aotinductor/ holds compiled shared libraries, which run code when loaded")
            for config_name in ("data/weights/model_weights_config.json", "data/constants/model_constants_config.json"):
                if config_name not in members:
                    problems.append(f"{config_name} is missing")
                    continue
                try:
                    config = json.loads(zf.read(prefix + config_name))["config"]
                    entries = list(config.items())
                except (ValueError, KeyError, TypeError, AttributeError):
                    problems.append(f"{config_name} is not a payload config")
                    continue
                for fqn, meta in entries:
                    if not isinstance(meta, dict):
                        problems.append(f"{config_name}: entry {fqn!r} is malformed")
                    elif meta.get("use_pickle") is not False or str(meta.get("path_name", "")).startswith(
                        ("custom_obj_", "opaque_obj_")
                    ):
                        problems.append(f"{fqn!r} is stored with pickle (use_pickle: true)")
            try:
                program = json.loads(zf.read(prefix + "models/model.json"))
            except ValueError:
                return [*problems, "models/model.json is not JSON"]
            for where, key, value in _walk(program):
                if key == "target" and where.endswith("nodes") and isinstance(value, str):
                    if not value.startswith(_TARGET_PREFIXES):
                        problems.append(f"graph node target {value[:80]!r} is not an operator")
                elif key == "expr_str" and isinstance(value, str):
                    problem = _expr_problem(value)
                    if problem:
                        problems.append(problem)
                elif key == "range_constraints" and isinstance(value, dict):
                    problems.extend(p for p in map(_expr_problem, value) if p)
            return problems
    except (zipfile.BadZipFile, OSError, KeyError) as exc:
        raise ModelLoadError(f"model: not a readable torch.export archive ({exc})") from exc


def refusal(problems: list[str]) -> str:
    shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
    return f"this .pt2 archive would run code when loaded ({shown}); {REEXPORT_HINT}"


def load_pt2(path: str):
    """The ExportedProgram's module (float32), loaded without pickle or exec from the archive."""
    problems = archive_problems(path)
    if problems:
        raise ModelLoadError(f"model: {refusal(problems)}")
    import torch
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _bytes_to_dataclass
    from torch.export.pt2_archive import _package as package

    try:
        with package.PT2ArchiveReader(path) as reader:
            # The raw-bytes paths of these two never unpickle: every entry was checked above.
            state_dict = package._load_state_dict(reader, "model")
            constants = package._load_constants(reader, "model")
            serialized = _bytes_to_dataclass(schema.ExportedProgram, reader.read_bytes("models/model.json"))
            raw_inputs = reader.read_bytes("data/sample_inputs/model.pt")
        example_inputs = torch.load(io.BytesIO(raw_inputs), weights_only=True) if raw_inputs else None
        program = ExportedProgramDeserializer(None).deserialize(serialized, state_dict, constants, example_inputs)
        module = program.module(check_guards=False)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to unpack the archive is the file's fault
        raise ModelLoadError(f"model: not a readable torch.export archive ({type(exc).__name__}: {exc})") from exc
    return module.to(torch.float32)

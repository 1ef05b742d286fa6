"""Put vLLM's Triton fused-MoE kernel into the git-ignored .peers/ folder, for bench_moe's peer.

Where it comes from: the `vllm` wheel on PyPI (pinned below; Apache-2.0), downloaded by pip
(`pip download vllm==VERSION --no-deps`) unless --wheel names one already downloaded. From its
vllm/model_executor/layers/fused_moe/fused_moe.py this takes the two @triton.jit functions the
bf16 path needs, `fused_moe_kernel` and `write_zeros_to_output`, unchanged, and writes them as
a module that imports only triton (vLLM's own module imports the rest of vLLM). It also copies
vLLM's tuned configurations for the benchmarked shapes (configs/E=..,N=..,device_name=...json,
Hopper devices only) and vLLM's LICENSE, and writes PROVENANCE.md (version, wheel sha256, paths).

Nothing here is committed: .peers/ is in .gitignore. The GPU machine has no network, so run this
here and let the device run carry the folder (carry=[".peers"]).

Usage: python scripts/fetch_peers.py [--out .peers/vllm_fused_moe] [--wheel PATH] [--version V]
"""

from __future__ import annotations

import argparse
import ast
import datetime
import glob
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile

VLLM_VERSION = "0.33.0"
KERNEL_FILE = "vllm/model_executor/layers/fused_moe/fused_moe.py"
CONFIG_DIR = "vllm/model_executor/layers/fused_moe/configs/"
FUNCTIONS = ("write_zeros_to_output", "fused_moe_kernel")  # callee first
# (E, N) of the benchmarked layers in vLLM's naming (N = the expert hidden size F).
SHAPES = ((128, 768), (32, 2880))
CONFIG_DEVICES = ("NVIDIA_H200", "NVIDIA_H100_80GB_HBM3", "NVIDIA_H100")
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".peers", "vllm_fused_moe")


def download_wheel(version: str, dest: str) -> str:
    """pip download of the vllm wheel alone (no dependencies); returns its path."""
    subprocess.run([sys.executable, "-m", "pip", "download", f"vllm=={version}", "--no-deps",
                    "--only-binary=:all:", "--dest", dest, "--quiet"], check=True)
    wheels = glob.glob(os.path.join(dest, f"vllm-{version}-*.whl"))
    if not wheels:
        raise SystemExit(f"pip download left no vllm-{version} wheel in {dest}")
    return wheels[0]


def extract_functions(source: str, names=FUNCTIONS) -> str:
    """The source text of the named top-level functions (decorators included), in `names` order.
    Raises if one is missing or if they use a global other than triton, tl, each other and
    builtins (then the extracted module would not run on its own)."""
    tree = ast.parse(source)
    found = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names}
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"{KERNEL_FILE} has no {missing}: the pinned vLLM changed; update fetch_peers.py")
    allowed = {"triton", "tl", "min", "max", "range", *names}
    lines = source.splitlines()
    parts = []
    for name in names:
        fn = found[name]
        local = {a.arg for a in fn.args.args + fn.args.kwonlyargs}
        local |= {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        used = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        unknown = sorted(used - local - allowed)
        if unknown:
            raise SystemExit(f"{name} uses {unknown} from vLLM: cannot run with triton alone")
        start = min(d.lineno for d in fn.decorator_list) if fn.decorator_list else fn.lineno
        parts.append("\n".join(lines[start - 1:fn.end_lineno]))
    return "\n\n\n".join(parts) + "\n"


def config_names(members) -> list[str]:
    """The wheel's tuned bf16 config files (no dtype= suffix) for SHAPES on Hopper devices."""
    want = []
    for E, N in SHAPES:
        for dev in CONFIG_DEVICES:
            name = f"{CONFIG_DIR}E={E},N={N},device_name={dev}.json"
            if name in members:
                want.append(name)
    return want


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="folder to write (git-ignored)")
    ap.add_argument("--wheel", help="a vllm wheel already downloaded (default: pip download it)")
    ap.add_argument("--version", default=VLLM_VERSION, help="vllm version to download")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download_wheel(args.version, tmp)
        with open(wheel, "rb") as fh:
            sha = hashlib.sha256(fh.read()).hexdigest()
        with zipfile.ZipFile(wheel) as zf:
            members = set(zf.namelist())
            source = zf.read(KERNEL_FILE).decode()
            licence = next((m for m in members if re.fullmatch(r"vllm-[^/]+\.dist-info/(licenses/)?LICENSE", m)), None)
            configs = {os.path.basename(m): zf.read(m) for m in config_names(members)}
            licence_text = zf.read(licence) if licence else None

    version = re.search(r"vllm-([^-]+)-", os.path.basename(wheel)).group(1)
    out = os.path.abspath(args.out)
    os.makedirs(os.path.join(out, "configs"), exist_ok=True)
    header = (f"# Extracted by lp-jax's scripts/fetch_peers.py from the vllm {version} wheel\n"
              f"# (sha256 {sha}), file {KERNEL_FILE}:\n"
              f"# functions {', '.join(FUNCTIONS)}, unchanged. Apache-2.0 (LICENSE beside this file).\n"
              "# Not part of lp-jax; never committed.\n"
              "import triton\nimport triton.language as tl\n\n\n")
    with open(os.path.join(out, "fused_moe_kernel.py"), "w") as fh:
        fh.write(header + extract_functions(source))
    for name, data in configs.items():
        with open(os.path.join(out, "configs", name), "wb") as fh:
            fh.write(data)
    if licence_text:
        with open(os.path.join(out, "LICENSE"), "wb") as fh:
            fh.write(licence_text)
    with open(os.path.join(out, "PROVENANCE.md"), "w") as fh:
        fh.write(f"# vLLM fused MoE kernel (peer of lp-jax's MoE layer)\n\n"
                 f"- source: PyPI wheel `{os.path.basename(wheel)}`, sha256 `{sha}`\n"
                 f"- kernel: `{KERNEL_FILE}`, functions {', '.join(FUNCTIONS)} -> fused_moe_kernel.py\n"
                 f"- tuned configs: {', '.join(sorted(configs)) or 'none for these shapes'}\n"
                 f"- licence: Apache-2.0 ({licence or 'LICENSE not found in the wheel'})\n"
                 f"- extracted {datetime.date.today().isoformat()} by scripts/fetch_peers.py\n")
    print(f"wrote {out}: fused_moe_kernel.py, {len(configs)} tuned configs "
          f"({', '.join(sorted(configs))}), LICENSE, PROVENANCE.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

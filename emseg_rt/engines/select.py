"""Which GPU this is, which TensorRT flavour serves it, and which of a package's engines may run on it.

The one place in emseg-rt that answers these (the builder, the engine runner, the runtime's TensorRT
backend, `--backend auto` and the benchmark all ask here):

    gpu_target()                 'sm86' for the current CUDA device, None without one
    current_target()             the same, or an EmsegError without a GPU (`--target current`)
    engine_flavour_for(target)   ('tensorrt' | 'tensorrt-rtx', what was chosen) or (None, why none fits)
    select_engine(package, target, component)   the engine record to run, or an EmsegError saying what to build

The version rule: an engine runs only with exactly the TensorRT version that built it (serialised
engines do not deserialise across versions, not even patch releases), on exactly the compute capability
it was built for (`check_engine_compatible`).
"""

from __future__ import annotations

from emseg_rt.engines.trt import FLAVOUR_INSTALL, RTX_TARGETS, installed_version
from emseg_rt.errors import EmsegError
from emseg_rt.package import FULL, EngineRecord, ModelPackage


def gpu_target(device: int | None = None) -> str | None:
    """'smXY' (compute capability X.Y) of CUDA device `device` (default: the current one) as torch sees
    it; None when there is no usable CUDA GPU."""
    try:
        import torch  # deferred: reading a package and choosing its engine load no torch (test_package)

        if not torch.cuda.is_available():
            return None
        major, minor = torch.cuda.get_device_capability(device)
    except Exception:  # noqa: BLE001  a CUDA build of torch whose driver is missing or broken
        return None
    return f"sm{major}{minor}"


def current_target() -> str:
    """`gpu_target()`, or an EmsegError when no CUDA GPU is visible."""
    target = gpu_target()
    if target is None:
        raise EmsegError("--target current: no CUDA GPU is visible; name targets instead, e.g. --target sm86,sm89")
    return target


def engine_flavour_for(target: str | None) -> tuple[str | None, str]:
    """The TensorRT flavour that can build and run engines for GPU `target` here.

    Standard TensorRT when it is installed (it serves every GPU it runs on); else TensorRT for RTX when it
    is installed and knows `target` (RTX_TARGETS: no Hopper). Returns (flavour, one line saying what was
    chosen) or (None, one line saying why none fits).
    """
    if target is None:
        return None, "no CUDA GPU is visible: TensorRT engines run only on a GPU"
    version = installed_version("tensorrt")
    if version is not None:
        return "tensorrt", f"tensorrt {version} for {target}"
    version = installed_version("tensorrt-rtx")
    if version is not None and target in RTX_TARGETS:
        return "tensorrt-rtx", f"tensorrt-rtx {version} for {target}"
    if version is not None:
        hopper = " (Hopper)" if target == "sm90" else ""
        return None, (f"tensorrt-rtx {version} has no {target}{hopper} target (it builds for {', '.join(RTX_TARGETS)}) "
                      f"and standard TensorRT is not installed; {FLAVOUR_INSTALL['tensorrt']}")
    return None, (f"no TensorRT is installed for {target}: "
                  f"{FLAVOUR_INSTALL['tensorrt-rtx']} (RTX-class GPUs) or {FLAVOUR_INSTALL['tensorrt']}")


def trt_versions_compatible(built: str, installed: str) -> bool:
    """Whether an engine built with TensorRT `built` deserialises with `installed`: exactly equal versions."""
    return str(built) == str(installed)


def _build_command(package_root: object, target: str, flavour: str | None) -> str:
    backend = f" --engine-backend {flavour}" if flavour else ""
    return f"run `emseg-rt build {package_root} --target {target}{backend}`"


def check_engine_compatible(record: EngineRecord, device_target: str, installed: str) -> None:
    """EmsegError unless `record` was built for `device_target` with exactly TensorRT version `installed`."""
    package_root = record.path.parent.parent
    rebuild = _build_command(package_root, device_target, record.flavour)
    if record.target != device_target:
        raise EmsegError(f"{record.file} was built for {record.target}, this GPU is {device_target}; {rebuild}")
    if not trt_versions_compatible(record.trt_version, installed):
        raise EmsegError(
            f"{record.file} was built with {record.flavour} {record.trt_version}, installed is {installed}; "
            f"engines do not load across versions; {rebuild}"
        )


def select_engine(package: ModelPackage, target: str | None, component: str = FULL) -> EngineRecord:
    """The engine of `package`'s `component` to run on GPU `target` ('sm86'; None = no GPU).

    EmsegError, in one line naming the targets the package has engines for and the `emseg-rt build`
    command to run, when there is no GPU, no engine for `target`, the engine's TensorRT flavour is not
    installed, or it was built with another TensorRT version.
    """
    engines = package.engines.get(component, {})
    have = ", ".join(sorted(engines)) or "none"
    if target is None:
        raise EmsegError(f"a TensorRT engine needs a CUDA GPU, and none is visible here ({package.root} has "
                         f"{component} engines for: {have}); use the onnxruntime or torch backend")
    record = engines.get(target)
    if record is None:
        flavour, _ = engine_flavour_for(target)
        raise EmsegError(f"{package.root} has no {component} engine for this GPU ({target}; engines for: {have}); "
                         + _build_command(package.root, target, flavour))
    installed = installed_version(record.flavour)
    if installed is None:
        how = FLAVOUR_INSTALL.get(record.flavour, f"pip install {record.flavour}")
        raise EmsegError(f"{record.file} needs {record.flavour} {record.trt_version}, which is not installed here "
                         f"({how}); or rebuild it with the TensorRT you have: "
                         + _build_command(package.root, target, engine_flavour_for(target)[0]))
    check_engine_compatible(record, target, installed)
    return record

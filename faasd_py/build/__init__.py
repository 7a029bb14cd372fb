"""Function images without Docker: reproducible OCI layouts assembled from host files.

Public API:
    host_python_base(cache_dir=None, python="/usr/bin/python3.11") -> Base
    build_function_image(FunctionSpec(...), out_layout, tag, base=None) -> BuiltImage
    export_tar(layout, tar_path), unpack(layout, dest, ref), image_config(layout, ref)
    push_layout(layout_dir, "host:port/repo:tag", ref, insecure=True)
"""

from faasd_py.build.base import APP_GID, APP_HOME, APP_UID, Base
from faasd_py.build.function import BuiltImage, FunctionSpec, build_function_image, watchdog_layer
from faasd_py.build.hostbase import default_cache_dir, host_python_base
from faasd_py.build.layer import Entry, Layer, write_layer
from faasd_py.build.layout import export_tar, find_manifest, image_config, read_index, unpack, verify_layout
from faasd_py.build.push import push_layout, push_layout_async, push_layout_skopeo

__all__ = [
    "APP_GID",
    "APP_HOME",
    "APP_UID",
    "Base",
    "BuiltImage",
    "Entry",
    "FunctionSpec",
    "Layer",
    "build_function_image",
    "default_cache_dir",
    "export_tar",
    "find_manifest",
    "host_python_base",
    "image_config",
    "push_layout",
    "push_layout_async",
    "push_layout_skopeo",
    "read_index",
    "unpack",
    "verify_layout",
    "watchdog_layer",
    "write_layer",
]

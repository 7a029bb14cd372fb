"""Function networking: a netns and a CNI bridge attachment per instance, plus the shared
hosts/resolv.conf. Imports nothing above it (runtime, provider, gateway)."""

from faasd_py.network.cni import (
    CONFLIST_FILE,
    LOOPBACK_FILE,
    Attachment,
    FunctionNetwork,
    parse_result,
    render_conflist,
    render_loopback,
    write_configs,
)
from faasd_py.network.dns import SharedFiles, derive_resolv, gateway_ip
from faasd_py.network.netns import check_key

__all__ = [
    "CONFLIST_FILE",
    "LOOPBACK_FILE",
    "Attachment",
    "FunctionNetwork",
    "SharedFiles",
    "check_key",
    "derive_resolv",
    "gateway_ip",
    "parse_result",
    "render_conflist",
    "render_loopback",
    "write_configs",
]

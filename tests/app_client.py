"""Call the launched app's named endpoints by widget label, the way a user fills the form."""
from __future__ import annotations

from gradio_client import Client


def call_args(client: Client, api_name: str, **by_label) -> list:
    """Positional arguments for an endpoint: defaults from the page, overridden by label."""
    params = client.view_api(print_info=False, return_format="dict")["named_endpoints"][api_name]["parameters"]
    args = []
    for p in params:
        args.append(by_label.pop(p["label"]) if p["label"] in by_label else p.get("parameter_default"))
    assert not by_label, f"no such widget on {api_name}: {sorted(by_label)}"
    return args

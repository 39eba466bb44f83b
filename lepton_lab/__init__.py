"""Lepton Lab: cloud and edge Dask clusters, training, compression and a signed model
registry, from JupyterLab.

    import lepton_lab
    cluster = lepton_lab.up()            # 2 cloud + 2 edge workers on this machine
    cluster.client.submit(f, x, resources=lepton_lab.on_site("edge"))

In IPython: ``%load_ext lepton_lab`` then ``%lepton help``.
"""

from .api import (  # noqa: F401
    ClusterHandle,
    RunResult,
    clusters,
    compress,
    connect,
    connect_cluster,
    current,
    down,
    federate,
    load,
    models,
    on_site,
    predict,
    publish,
    run_on,
    scale,
    serve,
    serve_stop,
    status,
    train,
    up,
)
from .errors import LeptonError  # noqa: F401

__version__ = "0.1.0"


def load_ipython_extension(ipython) -> None:
    """``%load_ext lepton_lab``: register the ``%lepton`` magics."""
    from .kernel.magics import load as register_magics

    register_magics(ipython)


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "lepton-lab"}]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "lepton_lab"}]


def _load_jupyter_server_extension(server_app) -> None:
    """Load the Lepton server extension (REST API, identity and authorization)."""
    from .server.extension import load_server_extension

    load_server_extension(server_app)


def _link_jupyter_server_extension(server_app) -> None:
    """Select Lepton's identity provider and authorizer before the server creates its own.

    jupyter_server reads only ``jpserver_extensions`` from the shipped config
    file, so the two classes are chosen here, at link time. A deployment that
    configured classes of its own (not jupyter_server's defaults) keeps them.
    """
    from jupyter_server.auth.authorizer import AllowAllAuthorizer, Authorizer
    from jupyter_server.auth.identity import IdentityProvider, PasswordIdentityProvider

    from .security.authz import LeptonAuthorizer
    from .security.identity import LeptonIdentityProvider

    if server_app.authorizer_class in (Authorizer, AllowAllAuthorizer):
        server_app.authorizer_class = LeptonAuthorizer
    if server_app.identity_provider_class in (IdentityProvider, PasswordIdentityProvider):
        server_app.identity_provider_class = LeptonIdentityProvider

"""The team deployment: the Lepton control plane as a JupyterHub service, and its parts.

* :mod:`.control_plane` — the service: Lepton's REST API and every service behind it,
  run under its own OS account; each caller is authenticated by its own Hub token.
* :mod:`.identity` — who calls the control plane, from JupyterHub, through the policy.
* :mod:`.forward` — a user's own Jupyter server in client mode: the sidebar's calls go
  on to the control plane with that user's identity.
* :mod:`.account_process` — one scheduler or worker, run under its owner's account.
"""

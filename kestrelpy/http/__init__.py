"""The HTTP listener: metrics, Kestrel's admin endpoints, the JSON API and the dashboard.

Everything is in docs/http.md. ``site.make_site`` builds the one ``twisted.web`` site;
``admin`` holds the Kestrel-compatible (Ostrich) endpoints and the probes, ``api`` the
JSON API, ``static/`` the dashboard's files.
"""

"""Knative itself: what a Service is called and the one client that talks to its API.

``names`` turns a service name from a DAG into the Kubernetes name ``deploy`` gives it and
URLs use; ``api`` is the only module that imports the ``kubernetes`` client (CRUD for
``deploy``/``status`` and URL discovery for the hook).
"""

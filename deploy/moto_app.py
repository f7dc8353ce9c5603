"""moto (AWS service mocks) as one WSGI app, for hypercorn.

The KCL's Kinesis client speaks HTTP/2 only, and to an http:// endpoint it sends the
cleartext prior-knowledge preface (h2c). moto's own server is HTTP/1.1, so the quickstart
serves moto's app with hypercorn, which speaks HTTP/1.1 and h2c on the same port.
"""

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

app = DomainDispatcherApplication(create_backend_app)

"""gunicorn's settings for Downstream: `gunicorn -c config/gunicorn.conf.py config.wsgi`.

The access log never writes the HTTP Basic user name (`%(u)s` in gunicorn's default format):
on the ingest API that user name is a source's write key. Command-line options override these.
"""

import os

wsgi_app = "config.wsgi"
workers = int(os.environ.get("WEB_CONCURRENCY", 2 * (os.cpu_count() or 1)))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", 2))

# "-" is standard output; GUNICORN_ACCESS_LOG= (empty) turns the access log off
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-") or None
# address, time, request line, status, bytes, duration, user agent: no user name, no headers
access_log_format = '%(h)s %(t)s "%(r)s" %(s)s %(b)s %(M)sms "%(a)s"'

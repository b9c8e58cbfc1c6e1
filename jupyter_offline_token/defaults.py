"""Default values of the settings that parts also take as constructor arguments.

Declared once, here: :class:`~.settings.OfflineTokenSettings` uses them as its traits' defaults
(what an admin sees in ``jupyter offline-token config``), and the parts use them for arguments a
caller (a test, a second backend) leaves out. No imports: anything may import this module.
"""

HTTP_TIMEOUT = 15.0  # seconds per request to the provider
AUDIT_RETENTION = 200  # audit events kept per token
MIN_REFRESH_INTERVAL = 10.0  # seconds between attempts for one token while the provider fails
BACKOFF_BASE = 10.0  # first retry delay, seconds; doubles per failure
BACKOFF_MAX = 300.0  # longest retry delay, seconds
BACKOFF_JITTER = 0.1  # random spread of each retry delay (fraction)
REFRESH_CONCURRENCY = 4  # background refreshes at once
WAKE_THRESHOLD = 60.0  # seconds of wall-clock jump that mean a laptop's wake

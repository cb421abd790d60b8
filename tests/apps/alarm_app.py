"""old_app, in a process where the app owns SIGALRM (as timeout helpers built on signal.alarm do):
the agent must leave it alone."""

import os
import signal

from old_app import app  # noqa: F401  (/fast, and /blocking with the time.sleep the agent must name)


def on_alarm(signum, frame):
    with open(os.path.join(os.environ.get("FASTAPI_HARNESS_RUN_DIR", "."), "alarms.log"), "a") as f:
        f.write("SIGALRM\n")


signal.signal(signal.SIGALRM, on_alarm)

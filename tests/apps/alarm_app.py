"""An app that owns SIGALRM (as timeout helpers built on signal.alarm do): the agent must leave it alone."""

import os
import signal
import time

from fastapi import FastAPI


def on_alarm(signum, frame):
    with open(os.path.join(os.environ.get("FASTAPI_HARNESS_RUN_DIR", "."), "alarms.log"), "a") as f:
        f.write("SIGALRM\n")


signal.signal(signal.SIGALRM, on_alarm)

app = FastAPI()


@app.get("/fast")
async def fast():
    return {"status": "ok"}


@app.get("/blocking")
async def blocking():
    time.sleep(0.05)  # the line the agent must name
    return {"status": "ok"}

"""An app whose process exits abruptly after serving a few hundred requests."""

import os

from fastapi import FastAPI

app = FastAPI()
served = 0


@app.get("/work")
async def work() -> dict:
    global served
    served += 1
    if served >= 300:
        os._exit(3)
    return {"served": served}

"""An app built by a factory, as `uvicorn --factory factory_app:create_app` runs it."""

import os

from fastapi import FastAPI


def create_app() -> FastAPI:
    app = FastAPI()

    @app.get("/pid")
    async def pid() -> dict:
        return {"pid": os.getpid()}

    return app

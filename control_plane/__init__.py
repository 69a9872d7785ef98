"""The QSAE Fleet control plane: FastAPI service, database, controller. Never imports torch or ray."""

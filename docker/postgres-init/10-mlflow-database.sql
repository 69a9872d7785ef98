-- Run once by the postgres image on an empty data volume (docker-compose.yml mounts this folder at
-- /docker-entrypoint-initdb.d): MLflow's backend store lives beside the fleet database.
CREATE DATABASE mlflow;

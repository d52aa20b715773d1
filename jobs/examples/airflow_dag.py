"""Airflow DAG: nightly scheduled cleaning submitted to a running Ray cluster.

Uses only Airflow's BashOperator so it needs no Ray provider package; `ray job submit` waits for
the job and returns its exit status (0 success, 1 incomplete, 2 bad config, 3 output locked).
"""

from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator

with DAG(
    dag_id="batch_inpaint_clean",
    schedule="15 2 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=10)},
) as dag:
    BashOperator(
        task_id="clean_uploads",
        cwd="/opt/batch-inpaint",
        env={"RAY_ADDRESS": "http://ray-head:8265"},
        append_env=True,
        bash_command=(
            "ray job submit --working-dir . -- python jobs/clean.py "
            "--images s3://my-bucket/uploads/ --masks s3://my-bucket/masks/ "
            "--output s3://my-bucket/cleaned/ --gpus-per-actor 1"
        ),
    )

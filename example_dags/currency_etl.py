"""A mapped ETL: convert each transaction to EUR in parallel, aggregate, load a report.

Every step runs in the ``etl-worker`` Knative Service; ``convert`` is mapped over the
transactions with ``.expand`` and ``load`` is deferrable (its HTTP call runs in the
triggerer, so no worker slot waits on it). Input (``params["data"]``): a list of
``{"id": ..., "amount": number, "currency": "USD"|"GBP"|"EUR"|"JPY"|"CHF"}``.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param, dag, task

#: EUR per unit; a real pipeline would fetch these from a rates API in ``extract``
RATES_TO_EUR = {"EUR": 1.0, "USD": 0.92, "GBP": 1.17, "JPY": 0.0062, "CHF": 1.04}

SAMPLE = [
    {"id": "t1", "amount": 100.0, "currency": "USD"},
    {"id": "t2", "amount": 50.0, "currency": "GBP"},
    {"id": "t3", "amount": 10000, "currency": "JPY"},
    {"id": "t4", "amount": 20.0, "currency": "EUR"},
]


@dag(
    schedule=None,
    catchup=False,
    params={"data": Param(SAMPLE, type="array", description="transactions to convert")},
    tags=["knative", "example"],
)
def currency_etl() -> Any:
    @task.knative(service="etl-worker")
    def extract(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        rows = (params or {}).get("data")
        if not isinstance(rows, list):
            raise ValueError(f"params['data'] must be a list of transactions, got {rows!r}")
        for row in rows:
            if not isinstance(row, dict) or not {"id", "amount", "currency"} <= row.keys():
                raise ValueError(f"each transaction needs id, amount and currency; got {row!r}")
        print(f"extracted {len(rows)} transactions")
        return rows

    @task.knative(service="etl-worker")
    def convert(txn: dict[str, Any]) -> dict[str, Any]:
        currency = str(txn["currency"]).upper()
        if currency not in RATES_TO_EUR:
            raise ValueError(
                f"transaction {txn['id']}: no rate for {currency!r} (known: {sorted(RATES_TO_EUR)})"
            )
        eur = round(float(txn["amount"]) * RATES_TO_EUR[currency], 2)
        print(f"converted {txn['id']}: {txn['amount']} {currency} -> {eur} EUR")
        return {"id": txn["id"], "currency": currency, "amount_eur": eur}

    @task.knative(service="etl-worker")
    def transform(converted: Any) -> dict[str, Any]:
        by_currency: dict[str, float] = {}
        for row in converted:
            by_currency[row["currency"]] = round(by_currency.get(row["currency"], 0.0) + row["amount_eur"], 2)
        return {"count": len(by_currency), "by_currency": by_currency}

    @task.knative(service="etl-worker", deferrable=True)
    def load(report: dict[str, Any]) -> dict[str, Any]:
        total = round(sum(report["by_currency"].values()), 2)
        print(f"loaded report: {report['count']} currencies, {total} EUR in total")
        return {"total_eur": total, **report}

    return load(transform(convert.expand(txn=extract())))


currency_etl()

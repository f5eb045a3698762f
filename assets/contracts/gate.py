"""Apply a pandera contract: split rows into passing and failing (with the check that failed)."""

from __future__ import annotations

from dataclasses import dataclass

import pandera.polars as pa
import polars as pl


@dataclass(frozen=True)
class ContractResult:
    passed: pl.DataFrame
    failed: pl.DataFrame  # input columns + `check` + `reason`
    failure_counts: dict[str, int]  # check -> failing rows
    schema_errors: list[str]  # failures not tied to a row (missing column, wrong dtype): the whole frame fails

    @property
    def ok(self) -> bool:
        return not self.schema_errors and self.failed.height == 0


def apply_contract(df: pl.DataFrame, contract: type[pa.DataFrameModel]) -> ContractResult:
    """Validate lazily (all checks, every row); a row failing several checks is reported under the first."""
    indexed = df.with_row_index("__row")
    try:
        contract.validate(df, lazy=True)
        return ContractResult(df, df.clear().with_columns(check=pl.lit(None, pl.String), reason=pl.lit(None, pl.String)), {}, [])
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
    row_cases = cases.filter(pl.col("index").is_not_null())
    if "parse_issues" in df.columns:
        # Rows Bronze could not type fail many checks at once; their parse issue is the one reason that helps.
        typed_issue = indexed.filter(pl.col("parse_issues").is_not_null()).select(
            pl.col("__row").cast(pl.Int32).alias("index"), pl.lit("fields_present_and_typed").alias("check"),
            pl.col("parse_issues").alias("reason"),
        )
    else:
        typed_issue = None
    frame_cases = cases.filter(pl.col("index").is_null())
    schema_errors = [
        f"{r['column'] or 'frame'}: {r['check']} ({r['failure_case']})" for r in frame_cases.iter_rows(named=True)
    ]
    is_column_check = pl.col("schema_context") == "Column"
    described = row_cases.select(
        pl.col("index").cast(pl.Int32),
        "check",
        reason=pl.when(is_column_check)
        .then(pl.format("{}: {} (got {})", "column", "check", pl.col("failure_case").cast(pl.String).fill_null("null")))
        .otherwise(pl.col("check")),
    )
    if typed_issue is not None:
        described = pl.concat([typed_issue, described])
    per_row = (
        described.group_by("index", maintain_order=True)
        .agg(pl.col("check").first(), pl.col("reason").first())
        .rename({"index": "__row"})
        .with_columns(pl.col("__row").cast(pl.UInt32))
    )
    counts = dict(described.group_by("index", maintain_order=True).first().group_by("check").len().iter_rows())
    failed = indexed.join(per_row, on="__row", how="inner").sort("__row").drop("__row")
    passed = indexed.join(per_row, on="__row", how="anti").drop("__row")
    return ContractResult(passed, failed, {str(k): int(v) for k, v in counts.items()}, schema_errors)

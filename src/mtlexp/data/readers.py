"""Reading data files into ``ParsedTable``: CSV (plain or gzip, by pyarrow) and Parquet, needed columns only.

Every value is read as a string first (no NA guessing: "NA" can be a real category; only the schema's
``missing`` markers are missing), then numbers are parsed from the distinct values. Errors name the file and
the line (CSV) or row (Parquet).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from mtlexp.data.schema import TableSchema
from mtlexp.errors import MtlexpError

PARQUET_SUFFIXES = (".parquet", ".pq")
GZIP_MAGIC = b"\x1f\x8b"
_DELIMITER_NAMES = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe", " ": "space"}
_DICTIONARY = pa.dictionary(pa.int32(), pa.string())


@dataclass
class ParsedTable:
    """The needed columns of one file, parsed: numbers as float64 (NaN = missing), strings as codes.

    A string column is ``(codes, values)``: ``values`` holds the distinct stripped strings and ``codes`` (int32)
    indexes them, with -1 for a missing value. ``rows`` are the rows' positions in the file, for error messages.
    """

    path: Path
    header: bool
    rows: np.ndarray
    numeric: dict[str, np.ndarray]
    strings: dict[str, tuple[np.ndarray, np.ndarray]]
    sha256: str

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, index: np.ndarray) -> ParsedTable:
        """The rows at ``index`` (positions in this table)."""
        return ParsedTable(
            self.path,
            self.header,
            self.rows[index],
            {k: v[index] for k, v in self.numeric.items()},
            {k: (codes[index], values) for k, (codes, values) in self.strings.items()},
            self.sha256,
        )

    def locate(self, position: int) -> str:
        """Where row ``position`` of this table sits in its file: ``line N`` (CSV) or ``row N`` (Parquet)."""
        row = int(self.rows[position])
        if is_parquet(self.path):
            return f"row {row + 1}"
        return f"line {_csv_line_number(read_bytes(self.path), row, self.header)}"


def is_parquet(path: Path) -> bool:
    return path.name.lower().endswith(PARQUET_SUFFIXES)


def read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it is gzip (recognised by its magic bytes, not its name)."""
    data = path.read_bytes()
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise MtlexpError(f"{path}: not a valid gzip file ({exc})") from None
    return data


def _csv_line_number(data: bytes, row: int, header: bool) -> int:
    """The 1-based line of data row ``row``, counting the way the CSV reader does (empty lines skipped)."""
    seen = -1 if header else 0
    for number, line in enumerate(data.split(b"\n"), start=1):
        if line.strip(b"\r"):
            if seen == row:
                return number
            seen += 1
    return number


def file_columns(path: Path, schema: TableSchema) -> list[str]:
    """The column names of a data file: its header, the Parquet schema, or the schema's ``columns``."""
    if not path.is_file():
        raise MtlexpError(f"{path}: file not found")
    if is_parquet(path):
        with reading_parquet(path):
            return list(pq.read_schema(path).names)
    if not schema.header:
        return list(schema.columns or ())
    with (gzip.open(path, "rb") if _is_gzip(path) else path.open("rb")) as handle:
        raw = handle.readline()
    try:
        first = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MtlexpError(f"{path}: not a UTF-8 text table (byte {exc.start} of the header line cannot be "
                          "decoded); expected CSV (optionally gzipped) or Parquet") from None
    if not first.strip():
        raise MtlexpError(f"{path}: the file is empty (no header line)")
    names = next(csv.reader([first], delimiter=schema.delimiter), [])
    return [n.strip() for n in names] if schema.strip else names


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == GZIP_MAGIC


def read_table(path: Path, schema: TableSchema, numeric: Sequence[str], strings: Sequence[str]) -> ParsedTable:
    """Parse the columns ``numeric`` (as numbers) and ``strings`` (as categorical codes) of one file."""
    columns = file_columns(path, schema)
    wanted = list(dict.fromkeys([*numeric, *strings]))
    if is_parquet(path):
        with path.open("rb") as handle:
            digest = sha256_stream(handle)
        with reading_parquet(path):
            table = pq.read_table(path, columns=wanted)
    else:
        data = read_bytes(path)
        digest = hashlib.sha256(data).hexdigest()
        table = _read_csv(path, data, schema, columns, wanted)
    return parse_arrow(table, path, schema, numeric, strings, np.arange(table.num_rows), digest)


def parse_arrow(
    table: pa.Table,
    path: Path,
    schema: TableSchema,
    numeric: Sequence[str],
    strings: Sequence[str],
    rows: np.ndarray,
    digest: str = "",
) -> ParsedTable:
    """The columns ``numeric`` and ``strings`` of an Arrow table read from ``path``, whose rows sit at the
    positions ``rows`` of the file (a whole file, or one streamed part of it)."""
    parsed = ParsedTable(path, schema.header, rows, {}, {}, digest)
    for name in dict.fromkeys([*numeric, *strings]):
        column = table.column(name)
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_boolean(column.type):
            if name in numeric:
                parsed.numeric[name] = pc.cast(column, pa.float64()).to_numpy().astype(np.float64, copy=False)
            column = pc.cast(column, pa.string())
            if name not in strings:
                continue
        codes, values = _dictionary_codes(column, schema)
        if name in strings:
            parsed.strings[name] = (codes, values)
        if name in numeric and name not in parsed.numeric:
            parsed.numeric[name] = _parse_numbers(parsed, name, codes, values)
    return parsed


def _check_utf8(path: Path, data: bytes) -> None:
    """Fail on bytes that are not UTF-8, naming the line; pyarrow would print a traceback from inside its
    invalid-row handler first. Decoded in slices, so a large file is never held twice."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    step = 1 << 24
    for start in range(0, len(data), step):
        try:
            decoder.decode(data[start : start + step], final=start + step >= len(data))
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, start + exc.start) + 1
            raise MtlexpError(f"{path}: line {line}: bytes that are not UTF-8 text; "
                              "expected CSV (optionally gzipped) or Parquet") from None


def _read_csv(path: Path, data: bytes, schema: TableSchema, columns: list[str], wanted: list[str]) -> pa.Table:
    _check_utf8(path, data)
    bad_rows: list[Any] = []

    def on_invalid_row(row: Any) -> str:
        bad_rows.append(row)
        return "skip" if len(bad_rows) < 100 else "error"

    try:
        table = pa_csv.read_csv(
            pa.BufferReader(data),
            read_options=pa_csv.ReadOptions(column_names=columns, skip_rows=1 if schema.header else 0),
            parse_options=pa_csv.ParseOptions(delimiter=schema.delimiter, invalid_row_handler=on_invalid_row),
            # Everything as strings, with no NA guessing ("NA" can be a real category); missing markers are ours.
            convert_options=pa_csv.ConvertOptions(
                column_types={name: _DICTIONARY for name in wanted},
                include_columns=wanted,
                null_values=[],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowException as exc:
        if not bad_rows:
            raise MtlexpError(f"{path}: could not parse as CSV ({str(exc).splitlines()[0]})") from None
    if bad_rows:
        # The reader is multi-threaded: report the earliest of the rows it rejected.
        def line_of(row: Any) -> int:
            text = row.text.encode()
            start = 0  # a candidate line start: the file's start, then just after each "\n" + text
            while start >= 0:
                end = start + len(text)
                if data.startswith(text, start) and data[end : end + 1] in (b"", b"\n", b"\r"):
                    return data.count(b"\n", 0, start) + 1
                found = data.find(b"\n" + text, start)
                start = found + 1 if found >= 0 else -1
            return 0

        first = min(bad_rows, key=line_of)
        kind = _DELIMITER_NAMES.get(schema.delimiter, repr(schema.delimiter))
        raise MtlexpError(
            f"{path}: line {line_of(first)}: expected {first.expected_columns} {kind}-separated fields, "
            f"got {first.actual_columns}"
        )
    return table


def _dictionary_codes(column: pa.ChunkedArray, schema: TableSchema) -> tuple[np.ndarray, np.ndarray]:
    """Codes (int32, -1 = missing) into the distinct stripped values of a string column."""
    if not pa.types.is_dictionary(column.type):
        column = column.dictionary_encode()
    column = column.unify_dictionaries() if column.num_chunks > 1 else column
    if column.num_chunks == 0:
        return np.zeros(0, np.int32), np.array([], dtype=object)
    raw_values = column.chunk(0).dictionary
    if schema.strip:
        raw_values = pc.utf8_trim_whitespace(raw_values)
    values, inverse = np.unique(np.asarray(raw_values.to_pylist(), dtype=object), return_inverse=True)
    present = ~np.isin(values, list(schema.missing))
    renumber = np.where(present, np.cumsum(present) - 1, -1).astype(np.int32)
    remap = np.append(renumber[inverse], np.int32(-1))  # the last position catches null indices
    values = values[present]
    indices = np.concatenate([chunk.indices.fill_null(-1).to_numpy() for chunk in column.chunks])
    return remap[indices], values


def _parse_numbers(parsed: ParsedTable, name: str, codes: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Numbers from a string column (parsing each distinct value once); a bad value names its line."""
    try:
        numbers = pc.cast(pa.array(values, pa.string()), pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:  # slow path: Python's float() is a little more lenient, and finds the culprit
        numbers = np.array([_to_float(v) for v in values], dtype=np.float64)
        bad = np.isnan(numbers) & ~np.array([v.strip().lower() == "nan" for v in values], dtype=bool)
        if bad.any():
            position = int(np.flatnonzero((codes >= 0) & bad[np.maximum(codes, 0)])[0])
            raise MtlexpError(
                f"{parsed.path}: {parsed.locate(position)}: column {name!r}: expected a number, "
                f"got {values[codes[position]]!r}"
            ) from None
    return np.append(numbers, np.nan)[codes]  # code -1 (missing) -> NaN


def _to_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


@contextmanager
def reading_parquet(path: Path) -> Iterator[None]:
    """Around any read of a Parquet file: a damaged file fails as one line naming it, whichever of pyarrow's
    readers (schema, table, dataset, row group) found the damage, in memory or streaming."""
    try:
        yield
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise MtlexpError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None


def sha256_stream(handle: BinaryIO) -> str:
    """The SHA-256 (hex) of everything left in a binary stream, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()

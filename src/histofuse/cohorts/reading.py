"""Read a delimited cohort table (or an Excel workbook's first sheet) as text cells.

Delimited tables are read whatever their line endings or compression; ``.xlsx`` / ``.xlsm``
workbooks (as BCNB publishes its clinical table) with openpyxl.

Every frame returned here is indexed by the row number in the file (the header is row 1, the
first data row is row 2), so errors raised later can name the rows a user sees in an editor.
Cells are stripped of surrounding whitespace (the cells as written are kept in ``frame.attrs``,
for the note on changed ids); an empty cell or ``NA`` is missing (``pd.NA``).
Any other text, ``NaN`` and ``inf`` included, is kept as written and judged by the reader that
knows what the column holds.
"""

from __future__ import annotations

import gzip
import io
import logging
import zipfile
from pathlib import Path

import pandas as pd

from histofuse.errors import ConfigError
from histofuse.sheets import MISSING_TOKENS, check_unique_columns

log = logging.getLogger(__name__)


PADDED = "padded_cells"
"""``frame.attrs`` key of :func:`read_table`: column → {file row: the cell as written} for every cell
that had surrounding whitespace, so that a reader can say which ids it changed."""

_SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t"}
_COMPRESSIONS = (".zip", ".gz")
EXCEL_SUFFIXES: tuple[str, ...] = (".xlsx", ".xlsm")


def _table_suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSIONS:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def separator_for(path: Path) -> str:
    """The field separator implied by the file name (``.csv`` → comma, ``.tsv``/``.txt`` → tab)."""
    suffix = _table_suffix(path)
    if suffix not in _SEPARATORS:
        raise ConfigError(
            f"cannot tell the field separator from the file name (suffix '{suffix or 'none'}').",
            path=path,
            fix=f"name the file with one of {', '.join(sorted(_SEPARATORS))} (optionally + .zip or .gz) or "
            f"{' / '.join(EXCEL_SUFFIXES)} for an Excel workbook, or give the separator explicitly.",
        )
    return _SEPARATORS[suffix]


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise ConfigError("table does not exist.", path=path, fix="correct the path.")
    name = path.name.lower()
    if name.endswith(".zip"):
        try:
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")]
                if len(members) != 1:
                    raise ConfigError(
                        f"the zip archive holds {len(members)} files "
                        f"({', '.join(m.filename for m in members[:5]) or 'none'}); one table is expected.",
                        path=path,
                        fix="zip exactly one table, or unzip it and name the table itself.",
                    )
                return archive.read(members[0])
        except zipfile.BadZipFile as err:
            raise ConfigError(f"not a readable zip archive ({err}).", path=path, fix="re-create the archive.") from err
    if name.endswith(".gz"):
        try:
            return gzip.decompress(path.read_bytes())
        except (OSError, EOFError) as err:
            raise ConfigError(f"not a readable gzip file ({err}).", path=path, fix="re-create the file.") from err
    return path.read_bytes()


def read_text(path: str | Path) -> str:
    """The table's text, decoded as UTF-8 (a byte-order mark is dropped), with ``\\n`` line ends.

    LF, CRLF and CR-only (old Mac/Excel) files, and files that mix them, give the same text.
    """
    path = Path(path)
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"the file is not UTF-8 text (byte {err.start}).",
            path=path,
            fix="save the table as UTF-8 (in Excel: 'CSV UTF-8').",
        ) from err
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _padded_cells(written: pd.DataFrame, frame: pd.DataFrame) -> dict[str, dict[int, str]]:
    """Column → {file row: cell as written} for the cells that stripping changed."""
    changed = (written != frame.fillna("")) & frame.notna()
    return {
        str(column): {int(row): str(written.at[row, column]) for row in frame.index[changed[column]]}
        for column in frame.columns
        if changed[column].any()
    }


def _delimited_cells(path: Path, sep: str | None) -> pd.DataFrame:
    separator = sep if sep is not None else separator_for(path)
    text = read_text(path)
    try:
        return pd.read_csv(
            io.StringIO(text),
            sep=separator,
            header=None,
            dtype=str,
            keep_default_na=False,
            na_values=[],
            skip_blank_lines=False,
        )
    except pd.errors.EmptyDataError as err:
        raise ConfigError("the table is empty.", path=path, fix="add a header line and rows.") from err
    except pd.errors.ParserError as err:
        raise ConfigError(
            f"cannot parse the table ({err}).",
            path=path,
            fix="check that every row has as many fields as the header and that quotes are balanced.",
        ) from err


def _excel_text(value: object) -> str:
    """A workbook cell as the text a user sees: whole numbers without ``.0``, empty cells empty."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _excel_cells(path: Path, sep: str | None) -> pd.DataFrame:
    """The first sheet's cells as text; other sheets are named in a warning and not read."""
    if sep is not None:
        raise ConfigError(
            f"a field separator ({sep!r}) was given for an Excel workbook.",
            path=path,
            fix="remove the 'sep' option (it applies to delimited text tables only).",
        )
    if not path.is_file():
        raise ConfigError("table does not exist.", path=path, fix="correct the path.")
    try:
        import openpyxl  # noqa: F401  (pandas' reader for .xlsx)
    except ImportError as err:  # pragma: no cover - openpyxl is pinned in requirements/lock.txt
        raise ConfigError(
            "reading an .xlsx workbook needs openpyxl, which is not installed.",
            path=path,
            fix="install the pinned requirements (make install), or save the sheet as CSV.",
        ) from err
    try:
        sheets = pd.read_excel(path, sheet_name=None, header=None, dtype=object, engine="openpyxl")
    except Exception as err:  # openpyxl raises many kinds for a damaged workbook
        raise ConfigError(
            f"cannot read the Excel workbook ({type(err).__name__}: {err}).",
            path=path,
            fix="open and re-save it in Excel, or save the sheet as CSV.",
        ) from err
    if not sheets:
        raise ConfigError("the workbook has no sheet.", path=path, fix="add a sheet with a header row.")
    names = list(sheets)
    if len(names) > 1:
        log.warning("%s: reading sheet %r; other sheets are not read: %s", path, names[0], ", ".join(map(repr, names[1:])))
    cells = sheets[names[0]]
    if cells.empty:
        raise ConfigError("the table is empty.", path=path, fix="add a header line and rows.")
    return cells.map(_excel_text)


def read_table(path: str | Path, *, sep: str | None = None) -> pd.DataFrame:
    """Read a delimited table as stripped text cells, indexed by file row number (header = 1).

    Blank lines are skipped (the row numbers of later rows still match the file). Duplicate or
    ragged headers raise ConfigError. An unnamed header cell (an index column written by pandas)
    is kept under the name ``""``.
    """
    path = Path(path)
    raw = _excel_cells(path, sep) if path.suffix.lower() in EXCEL_SUFFIXES else _delimited_cells(path, sep)
    written = raw.fillna("")
    raw = written.apply(lambda column: column.str.strip())
    header = [str(name) for name in raw.iloc[0]]
    check_unique_columns(header, path=path)
    frame = raw.iloc[1:].copy()
    frame.columns = header
    frame.index = pd.RangeIndex(2, len(raw) + 1)
    padded = written.iloc[1:].set_axis(header, axis=1).set_axis(frame.index, axis=0)
    frame = frame.loc[~(frame == "").all(axis=1)]
    frame = frame.mask(frame.isin(MISSING_TOKENS), pd.NA).astype(object)
    frame.attrs[PADDED] = _padded_cells(padded.loc[frame.index], frame)
    log.debug("%s: %d rows × %d columns", path, len(frame), len(frame.columns))
    return frame

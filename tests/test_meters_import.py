"""The meter registry CSV: loaded whole, or refused whole with every bad line named."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import sqlalchemy as sa

from hangw import cli
from hangw.meters import MeterFileError, parse_meter_csv
from hangw.store import schema
from hangw.store.model import grants, meters

HEADER = (
    "esiid,meter_serial,tdsp_duns,ror_duns,hardware_version,firmware_version,han_capable,active\n"
)


def test_good_file_parses_every_field() -> None:
    """A good line becomes a Meter with each column in place."""
    text = HEADER + "10443720000000001,M1,1039940674000,0000000000001,GE,5.2.1,yes,false\n"
    (meter,) = parse_meter_csv(io.StringIO(text))
    assert (meter.esiid, meter.meter_serial, meter.tdsp_duns, meter.ror_duns) == (
        "10443720000000001",
        "M1",
        "1039940674000",
        "0000000000001",
    )
    assert (meter.han_capable, meter.active, meter.customer_id) == (True, False, None)


def test_bad_lines_are_all_named_with_their_numbers() -> None:
    """Every bad line is reported with its line number and what is wrong."""
    text = HEADER + (
        "10443720000000001,M1,1039940674000,0000000000001,GE,5.2.1,true,true\n"
        "10443720000000002,M2,12,0000000000001,GE,5.2.1,true,true\n"
        "10443720000000001,M3,1039940674000,0000000000001,GE,5.2.1,maybe,true\n"
        "bad esiid!,M4,1039940674000,0000000000001,GE,,true,true\n"
    )
    with pytest.raises(MeterFileError) as refusal:
        parse_meter_csv(io.StringIO(text), "m.csv")
    lines = dict(refusal.value.problems)
    assert set(lines) == {3, 4, 5}
    assert "tdsp_duns '12'" in lines[3]
    assert "already on line 2" in lines[4] and "han_capable must be true or false" in lines[4]
    assert "esiid 'bad esiid!'" in lines[5] and "firmware_version is empty" in lines[5]
    assert str(refusal.value).startswith("m.csv: 3 problem(s), nothing loaded")


def test_missing_column_is_refused() -> None:
    """A file without a required column is refused on line 1."""
    with pytest.raises(MeterFileError, match="missing column"):
        parse_meter_csv(io.StringIO("esiid,meter_serial\n1,2\n"))


def test_cli_import_loads_nothing_from_a_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`hangw meters import` of a file with one bad line changes nothing and exits 1."""
    config = tmp_path / "c.toml"
    config.write_text(f'[gateway]\nstate_dir = "{tmp_path}"\n')
    good = HEADER + "10443720000000001,M1,1039940674000,0000000000001,GE,5.2.1,true,true\n"
    (tmp_path / "good.csv").write_text(good)
    changed = good.replace(",M1,", ",M1-NEW,")
    (tmp_path / "bad.csv").write_text(changed + "10443720000000002,M2,1,1,GE,5.2.1,true,true\n")
    assert cli.main(["--config", str(config), "meters", "import", str(tmp_path / "good.csv")]) == 0
    assert cli.main(["--config", str(config), "meters", "import", str(tmp_path / "bad.csv")]) == 1
    assert "line 3" in capsys.readouterr().err
    engine = schema.make_engine(f"sqlite:///{tmp_path / 'hangw.sqlite'}")
    with engine.connect() as conn:
        rows = conn.execute(sa.select(meters.c.esiid, meters.c.meter_serial)).all()
    assert [tuple(row) for row in rows] == [("10443720000000001", "M1")]


def test_a_csv_saved_with_a_byte_order_mark_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A spreadsheet's CSV export, which starts with a UTF-8 byte-order mark, imports as usual."""
    config = tmp_path / "c.toml"
    config.write_text(f'[gateway]\nstate_dir = "{tmp_path}"\n')
    line = "10443720000000001,M1,1039940674000,0000000000001,GE,5.2.1,true,true\n"
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + (HEADER + line).encode())
    assert cli.main(["--config", str(config), "meters", "import", str(tmp_path / "bom.csv")]) == 0
    assert "1 meter(s) added" in capsys.readouterr().out


def test_a_file_without_customer_ids_keeps_the_customers_and_their_grants(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A registry file without the customer_id column updates a meter and leaves its customer and
    the grants that customer gave alone; one naming another customer, or none, revokes them."""
    config = tmp_path / "c.toml"
    config.write_text(f'[gateway]\nstate_dir = "{tmp_path}"\n')
    meter = "10443720000000001,M1,1039940674000,0000000000001,GE,{firmware},true,true"

    def import_(name: str, text: str) -> None:
        (tmp_path / name).write_text(text)
        assert cli.main(["--config", str(config), "meters", "import", str(tmp_path / name)]) == 0

    def stored() -> tuple[str | None, str, float | None]:
        engine = schema.make_engine(f"sqlite:///{tmp_path / 'hangw.sqlite'}")
        with engine.connect() as conn:
            row = conn.execute(sa.select(meters.c.customer_id, meters.c.firmware_version)).one()
            revoked_at = conn.execute(sa.select(grants.c.revoked_at)).scalar_one()
        engine.dispose()
        return row.customer_id, row.firmware_version, revoked_at

    with_customers = HEADER.rstrip("\n") + ",customer_id\n"
    import_("first.csv", with_customers + meter.format(firmware="5.2.1") + ",CUST-1\n")
    engine = schema.make_engine(f"sqlite:///{tmp_path / 'hangw.sqlite'}")
    with engine.begin() as conn:
        conn.execute(
            grants.insert().values(
                grant_id="grt_1",
                esiid="10443720000000001",
                hsp_party_id="0000000000003",
                granted_by="CUST-1",
                granted_at=1.0,
                revoked_at=None,
            )
        )
    engine.dispose()

    import_("firmware.csv", HEADER + meter.format(firmware="5.3.0") + "\n")
    assert stored() == ("CUST-1", "5.3.0", None)
    import_("moved.csv", with_customers + meter.format(firmware="5.3.0") + ",CUST-2\n")
    customer, _, revoked_at = stored()
    assert customer == "CUST-2" and revoked_at is not None
    import_("gone.csv", with_customers + meter.format(firmware="5.3.0") + ",\n")
    assert stored()[0] is None
    assert "1 updated" in capsys.readouterr().out

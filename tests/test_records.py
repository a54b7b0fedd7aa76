import json

import pytest

from gpt2_lightning.data.records import FieldNames, load_records, split_records
from gpt2_lightning.errors import DataError


def write(tmp_path, content, name="data.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def test_json_and_jsonl_records_are_normalised(tmp_path):
    records = [{"instruction": "a", "output": "b", "id": 7},
               {"instruction": "c", "input": None, "response": "d"},
               {"instruction": "e", "input": "f", "output": "g"}]
    expected = [{"instruction": "a", "input": "", "output": "b", "id": 7},
                {"instruction": "c", "input": "", "output": "d"},
                {"instruction": "e", "input": "f", "output": "g"}]
    assert load_records(write(tmp_path, records)) == expected
    jsonl = write(tmp_path, "\n".join(json.dumps(r) for r in records) + "\n\n", "data.jsonl")
    assert load_records(jsonl) == expected


def test_configurable_field_names(tmp_path):
    path = write(tmp_path, [{"prompt": "p", "context": "c", "completion": "x"}])
    fields = FieldNames(instruction="prompt", input="context", output="completion")
    assert load_records(path, fields) == [{"instruction": "p", "input": "c", "output": "x"}]


@pytest.mark.parametrize("content, message", [
    ("", "the file is empty"),
    ("[]", "holds no records"),
    ('[{"instruction": "a", "output": "b"},\n {"instruction": }]', "invalid JSON at line 2, column 18"),
    ('{"instruction": "a", "output": "b"}', "expected a JSON array of records .* got a JSON object"),
    ([{"instruction": "a", "output": "b"}, "text"], "record 2: expected an object .* got a JSON string"),
    ([{"output": "b"}], "record 1: missing field 'instruction'"),
    ([{"instruction": "a", "output": "b"}, {"instruction": "a"}], "record 2: missing field 'output'"),
    ([{"instruction": 5, "output": "b"}], "record 1: field 'instruction' must be a string, got a JSON number"),
    ([{"instruction": "a", "input": ["x"], "output": "b"}],
     "record 1: field 'input' must be a string, got a JSON array"),
    ([{"instruction": "  \n", "output": "b"}], "record 1: field 'instruction' is empty"),
    ([{"instruction": "a", "response": ""}], "record 1: field 'response' is empty"),
])
def test_malformed_files_name_file_record_and_field(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(DataError, match=f"^{path}: {message}"):
        load_records(path)


def test_bad_jsonl_line_and_missing_or_binary_file(tmp_path):
    path = write(tmp_path, '{"instruction": "a", "output": "b"}\n{oops\n', "d.jsonl")
    with pytest.raises(DataError, match=f"^{path}: invalid JSON at line 2, column 2"):
        load_records(path)
    with pytest.raises(DataError, match="no such file"):
        load_records(tmp_path / "missing.json")
    binary = tmp_path / "b.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DataError, match="not UTF-8 text"):
        load_records(binary)


def test_split_is_the_reference_split(seed_dataset):
    records = load_records(seed_dataset)
    assert len(records) == 1100
    train, val, test = split_records(records)
    assert (len(train), len(val), len(test)) == (935, 55, 110)
    # The reference takes test before val: records 935..1044 are the test set.
    assert test[0] is records[935] and val[0] is records[1045]


def test_seeded_shuffle_is_deterministic_and_a_partition():
    records = [{"instruction": str(i), "input": "", "output": "x"} for i in range(100)]
    first = split_records(records, shuffle=True, seed=1)
    assert first == split_records(records, shuffle=True, seed=1)
    assert first != split_records(records, shuffle=True, seed=2)
    assert sorted(r["instruction"] for part in first for r in part) == sorted(str(i) for i in range(100))


@pytest.mark.parametrize("fractions, message", [
    ((0.8, 0.1, 0.2), "summing to 1"), ((0.5, 0.5), "3 non-negative"), ((1.2, -0.1, -0.1), "non-negative"),
])
def test_bad_split_fractions(fractions, message):
    with pytest.raises(DataError, match=message):
        split_records([{}] * 10, fractions)


def test_empty_split_is_an_error():
    with pytest.raises(DataError, match=r"the test split is empty: 5 records x 0.1 rounds to 0; .*\(data\.split="):
        split_records([{}] * 5)


def test_records_in_another_shape_get_the_fields_to_set(tmp_path):
    path = tmp_path / "pc.jsonl"
    path.write_text('{"prompt": "Name a color.", "completion": "Red."}\n')
    with pytest.raises(DataError) as err:
        load_records(path)
    assert str(err.value) == (f"{path}: record 1: missing field 'instruction'; its fields suggest "
                              "data.fields.instruction=prompt data.fields.output=completion")
    assert load_records(path, FieldNames(instruction="prompt", output="completion"))[0]["output"] == "Red."


@pytest.mark.parametrize("name", ["data.TXT", "data.xlsx"])
def test_a_file_of_another_format_says_which_formats_are_read(tmp_path, name):
    path = tmp_path / name
    path.write_text("instruction,output\nName a color.,Red.\n")
    with pytest.raises(DataError, match=r"records are read from a JSON array \(\.json\), JSON Lines \(\.jsonl\), "
                                        r"CSV \(\.csv\), Parquet \(\.parquet\), a saved Hugging Face dataset folder"):
        load_records(path)


def test_a_file_that_is_not_what_its_name_says_is_one_line(tmp_path):
    pytest.importorskip("datasets")
    path = tmp_path / "data.parquet"
    path.write_text("instruction,output\nName a color.,Red.\n")
    with pytest.raises(DataError, match=r"data.parquet: cannot read it \(Parquet magic bytes not found"):
        load_records(path)

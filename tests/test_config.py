import pytest
import yaml

from fpn.config import ModelConfig, apply_overrides, from_dict, load_yaml, to_dict, to_yaml
from fpn.errors import ConfigError
from fpn.presets import PRESETS, preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_yaml(name):
    config = preset(name)
    again = from_dict(ModelConfig, yaml.safe_load(to_yaml(config)))
    assert again == config
    again.validate()


def test_unknown_key_is_named_with_its_path():
    with pytest.raises(ConfigError, match="run.yaml: unknown config key 'rpn.nms_tresh'"):
        from_dict(ModelConfig, {"class_names": ["a"], "rpn": {"nms_tresh": 0.5}}, where="run.yaml")


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="'backbone.depth' must be int"):
        from_dict(ModelConfig, {"backbone": {"depth": "fifty"}})


def test_validate_rejects_unknown_design():
    config = preset("tiny-fpn", design="pyramid-of-doom")
    with pytest.raises(ConfigError, match="pyramid.design must be one of"):
        config.validate()


def test_overrides_parse_values_and_reject_unknown_keys():
    data = to_dict(preset("tiny-fpn"))
    apply_overrides(data, ["rpn.nms_thresh=0.6", "transform.min_size=[256, 320]", "pyramid.design=hierarchy"])
    config = from_dict(ModelConfig, data)
    assert config.rpn.nms_thresh == 0.6 and config.transform.min_size == [256, 320]
    assert config.pyramid.design == "hierarchy"
    with pytest.raises(ConfigError, match="unknown config key 'rpn.bogus'"):
        apply_overrides(data, ["rpn.bogus=1"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        apply_overrides(data, ["rpn.nms_thresh"])


def test_load_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        load_yaml(bad)
    with pytest.raises(ConfigError, match="missing.yaml: cannot read"):
        load_yaml(tmp_path / "missing.yaml")

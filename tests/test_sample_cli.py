"""`sa-jax sample` / `sample.py` prompt arguments: positional prompts, `--prompt` (the issue's
`python sample.py --prompt "..." --seconds-total 4`), and a prompts file, in that order."""

import pytest

from sa_jax.cli import build_parser
from sa_jax.commands.sample import read_prompts


def test_prompt_flag_positional_and_file(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("# a comment\nthird\n\n")
    args = build_parser().parse_args(["sample", "first", "--prompt", "second", "--seconds-total", "4",
                                      "--prompts-file", str(f)])
    assert read_prompts(args) == ["first", "second", "third"] and args.seconds_total == 4.0 and args.model is None


def test_no_prompt_is_a_clear_error():
    with pytest.raises(ValueError, match="--prompt TEXT"):
        read_prompts(build_parser().parse_args(["sample"]))

"""held_out_summary: held out or not, from the window indices actually read."""

from sae.activations.provenance import held_out_summary

TRAIN = {"source": "a.txt", "context_size": 16, "bos": "window", "eval_every": 5, "part": "train"}


def test_windows_of_the_eval_part_are_held_out_and_others_are_not():
    """Pins: every 5th window (4, 9, ...) is held out under eval_every 5; windows 2, 5 are not;
    `max_windows` stops training, so later windows were never read by it."""
    read = {**TRAIN, "part": "eval"}
    assert held_out_summary(TRAIN, read, [4, 9, 14])["held_out"] is True
    leak = held_out_summary(TRAIN, {**read, "eval_every": 3}, [2, 5, 8, 11, 14])
    assert leak["held_out"] is False and leak["windows_in_training"] == 4
    capped = held_out_summary({**TRAIN, "max_windows": 10}, read, [12, 13])
    assert capped["held_out"] is True and capped["windows_read"] == 2


def test_other_text_or_no_record():
    """Pins: another source counts as held out (said so); no training record gives 'unknown'."""
    other = held_out_summary(TRAIN, {**TRAIN, "source": "b.txt"}, [0, 1])
    assert other["held_out"] is True and "different packed text" in other["held_out_basis"]
    assert held_out_summary(None, TRAIN, [0])["held_out"] == "unknown"

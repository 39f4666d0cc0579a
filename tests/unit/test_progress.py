"""The one progress-bar switch: on by default, off inside ``bars(False)``, restored after the block."""

from __future__ import annotations

import io

from mmpo import progress


def test_bars_switch_on_and_off_inside_a_block_and_restore_the_setting_after():
    with progress.bars(True):
        assert progress.enabled()
        with progress.bars(False):
            assert not progress.enabled()
            assert progress.bar(range(3)).disable
        assert progress.enabled()
        stream = io.StringIO()
        with progress.bar(range(3), desc="counting", file=stream) as shown:
            assert not shown.disable
            list(shown)
        assert "counting" in stream.getvalue()
        assert progress.bar(range(3), disable=True).disable  # a caller's own disable still holds


def test_disable_and_enable_last_until_changed():
    with progress.bars(True):
        progress.disable()
        assert not progress.enabled()
        progress.enable()
        assert progress.enabled()

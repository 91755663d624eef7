"""The platform image carries every first-party package the settings load (no engine needed)."""

from __future__ import annotations

import re

from django.conf import settings

from tests.support.paths import ROOT


def test_the_web_image_copies_every_installed_first_party_app() -> None:
    dockerfile = (ROOT / "platform" / "web.Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (?:--from=\S+ )?\S*?([a-z_]+)/ \1/$", dockerfile, re.M))
    first_party = {
        app.split(".")[0] for app in settings.INSTALLED_APPS if (ROOT / app.split(".")[0]).is_dir()
    }
    assert first_party
    assert first_party - copied == set()

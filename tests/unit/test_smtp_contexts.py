"""The SMTP check's TLS contexts are made once per CA file, not per connection (loading the
system trust store costs ~100 ms), and a replaced CA file is read again."""

from __future__ import annotations

import os
import ssl

import pytest
import trustme
from mailpath.probes.smtp import SmtpOptions, _contexts


def test_contexts_are_made_once_and_a_replaced_ca_file_is_read_again(tmp_path):
    assert _contexts(SmtpOptions()) is _contexts(SmtpOptions(timeout=3))
    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    first = _contexts(SmtpOptions(ca_file=str(ca)))
    assert first is _contexts(SmtpOptions(ca_file=str(ca))) and first is not _contexts(SmtpOptions())
    assert first["verify"].verify_mode == ssl.CERT_REQUIRED and first["verify"].check_hostname
    assert not first["trust"].check_hostname and first["none"].verify_mode == ssl.CERT_NONE
    trustme.CA().cert_pem.write_to_path(str(ca))
    stat = ca.stat()
    os.utime(ca, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert _contexts(SmtpOptions(ca_file=str(ca))) is not first


def test_an_unreadable_ca_file_still_fails_at_each_check(tmp_path):
    with pytest.raises((OSError, ssl.SSLError)):
        _contexts(SmtpOptions(ca_file=str(tmp_path / "absent.pem")))
    with pytest.raises((OSError, ssl.SSLError)):
        _contexts(SmtpOptions(ca_file=str(tmp_path / "absent.pem")))

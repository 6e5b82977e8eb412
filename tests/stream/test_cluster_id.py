import base64
import uuid

from stream import services


def test_cluster_id_never_starts_with_a_dash(monkeypatch):
    # 0xF8 as the first byte encodes to '-' in base64url: the storage tool would read it as a flag
    dashed = uuid.UUID(bytes=b"\xf8" + bytes(15))
    plain = uuid.UUID(bytes=b"\x10" + bytes(15))
    draws = iter([dashed, dashed, plain])
    monkeypatch.setattr(services.uuid, "uuid4", lambda: next(draws))
    cid = services.kraft_cluster_id()
    assert base64.urlsafe_b64encode(dashed.bytes).decode().startswith("-")
    assert cid == base64.urlsafe_b64encode(plain.bytes).decode().rstrip("=")
    assert len(cid) == 22

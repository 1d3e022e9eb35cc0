"""Test-wide settings: the embedding cache (`ltr.data.embedding_cache`) lives in a temporary directory for the
test session, never in the user's ~/.cache, so tests neither read embeddings another run left nor leave any."""
import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_embedding_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("LTR_EMBEDDING_CACHE", str(tmp_path_factory.mktemp("embedding_cache")))
    yield
    mp.undo()

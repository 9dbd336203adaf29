"""A function that creates the HNSW index for a new embedding width, run as the owner.

The app connects as a role that owns no table (so it cannot switch the ledger's triggers
off), and only a table's owner may create indexes on it. This SECURITY DEFINER function,
owned by the migrating role, does exactly that one thing for `knowledge_chunk`, for a
bounded integer the app passes; nothing else runs with the owner's rights.
"""

from django.db import migrations

FUNCTION = """
CREATE FUNCTION knowledge_embedding_index_ensure(dimensions integer) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF dimensions IS NULL OR dimensions < 1 OR dimensions > 2000 THEN
        RAISE EXCEPTION 'no HNSW index for % dimensions', dimensions;
    END IF;
    EXECUTE format(
        'CREATE INDEX IF NOT EXISTS %I ON knowledge_chunk '
        'USING hnsw (((embedding)::vector(%s)) vector_cosine_ops) '
        'WITH (m = 16, ef_construction = 64) WHERE embedding_dimensions = %s',
        'chunk_embedding_hnsw_' || dimensions, dimensions, dimensions
    );
END;
$$;
"""


class Migration(migrations.Migration):
    dependencies = [("knowledge", "0003_group_chats_and_search_permission")]

    operations = [
        migrations.RunSQL(
            FUNCTION, "DROP FUNCTION IF EXISTS knowledge_embedding_index_ensure(integer)"
        )
    ]

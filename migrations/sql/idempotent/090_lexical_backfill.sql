-- Data, not a definition: documents that the BM25 index does not cover are indexed now.
-- That happens when documents existed before the lexical tables did (a database upgraded from
-- before revision 0004), or were written while the triggers were absent (between a downgrade and
-- the next upgrade). Counting is a scan of documents and lexical_documents; nothing else runs
-- when they agree. A document without lexemes (stopwords only) has no lexical_documents row.
DO $$
BEGIN
    IF (SELECT count(*) FROM medpg.documents WHERE length(tsv) > 0)
       <> (SELECT count(*) FROM medpg.lexical_documents) THEN
        PERFORM medpg.rebuild_lexical_index();
    END IF;
END
$$;

"""The KuaiRand importer: `importer` runs it (its docstring holds the rules), `read` streams the
CSVs and feature tables, `parse` types their strings, `convert` turns log chunks into impression
rows, `write` writes day partitions, `columns` and `report` say what goes in and what came out."""

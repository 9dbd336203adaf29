"""Domain actions of the audit app, split by topic; import the module you need."""

DROP TABLE executions;
DROP TABLE ledger_holds;
DROP TABLE ledger_postings;
DROP TABLE ledger_entries;
DROP TABLE ledger_accounts;
DROP TABLE api_keys;
DROP TABLE projects;
DROP TABLE orgs;

DROP FUNCTION ledger_resolve; DROP FUNCTION ledger_hold;

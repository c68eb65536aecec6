DROP TABLE org_routing;

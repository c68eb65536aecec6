DROP TABLE org_file_settings;
DROP TABLE files;

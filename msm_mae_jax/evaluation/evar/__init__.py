"""The paper's EVAR downstream tasks: the settings table, task builders and the suite runner."""

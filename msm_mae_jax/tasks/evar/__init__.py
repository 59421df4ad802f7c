"""The paper's EVAR downstream tasks: the settings table and the task builders."""

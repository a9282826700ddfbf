"""XLCoST NL code search, java (configs/xlcost.py has the settings and the command)."""

from configs import xlcost


def get_config(arg=None):
    return xlcost.config("java", arg)

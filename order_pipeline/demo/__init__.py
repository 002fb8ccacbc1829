"""The demo company: synthetic ERP, finance, WMS and carrier sources, and the config that maps them.

`company.build_demo_company` is the entry point.
"""

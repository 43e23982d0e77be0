"""covidct.explain"""

"""covidct.evaluate"""
